"""Helpers of the pretrain tests: tiny-model flags, and runs of pretrain/main.py through
the real `deepspeed` launcher with 2 CPU ranks."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

from slurm_harness import free_port  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parents[2]
# 2 layers, hidden 64, the 1001-id test SentencePiece vocabulary, 64-token sequences.
TINY_MODEL = ("hidden_size=64,num_hidden_layers=2,num_attention_heads=2,intermediate_size=128,vocab_size=1001,"
              "max_position_embeddings=64,position_buckets=32")


def cpu_env(**extra) -> dict:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def train_args(data_dir: Path, output_dir: Path, **flags) -> list[str]:
    """Flags of a short tiny-model run; keyword arguments add or override flags."""
    values = {"ds_config": "ds_configs/zero2.json", "model_config": "deberta-v3-base", "set_model": TINY_MODEL,
              "objective": "mlm", "data_dir": data_dir, "output_dir": output_dir, "max_steps": 30,
              "micro_batch_size": 8, "lr": 2e-3, "warmup_steps": 3, "log_interval": 5, "eval_interval": 1000,
              "save_interval": 1000, "eval_samples": 64, "num_workers": 1, "tensorboard": "false"}
    values.update(flags)
    return [item for name, value in values.items() for item in (f"--{name}", str(value))]


def deepspeed_command(args: list[str], ranks: int = 2) -> list[str]:
    """`deberta-launch`: the `deepspeed` launcher on a free port, started again on another
    if a concurrent job takes it first."""
    return [sys.executable, "-m", "training.launch", "--num_gpus", str(ranks), "pretrain/main.py", *args]


def plain_deepspeed_command(args: list[str], ranks: int = 2, port: int | None = None) -> list[str]:
    """The `deepspeed` launcher itself (its console script, or the same runner as a module)."""
    launcher = [shutil.which("deepspeed")] if shutil.which("deepspeed") else \
        [sys.executable, "-m", "deepspeed.launcher.runner"]
    return [*launcher, "--num_gpus", str(ranks), "--master_port", str(port or free_port()), "pretrain/main.py", *args]


def run_deepspeed(args: list[str], timeout: float = 240, **env) -> subprocess.CompletedProcess:
    return subprocess.run(deepspeed_command(args), cwd=REPO, env=cpu_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def step_losses(output_dir: Path) -> dict[int, float]:
    """The loss of each step as last logged (a resumed run logs its steps again)."""
    return {r["step"]: r["loss"] for r in read_jsonl(output_dir / "metrics.jsonl")}


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"


def make_word_shards(folder: Path, seed: int) -> Path:
    """600 documents of 50 words drawn from 12, sharded in 64-token sequences with the test
    tokenizer (1001 ids) into ``folder/data``; ``seed`` chooses the words."""
    from data_prep.cli import main as data_prep

    rng = random.Random(seed)
    words = "falcon meadow quartz lantern harbor ember willow canyon river stone music garden".split()
    corpus = folder / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(50)) for _ in range(600)) + "\n")
    assert data_prep(["shard", "--input", str(corpus), "--tokenizer", str(REPO / "tests" / "assets" / "spm.model"),
                      "--output", str(folder / "data"), "--seq_len", "64", "--valid_fraction", "0.05"]) == 0
    return folder / "data"
