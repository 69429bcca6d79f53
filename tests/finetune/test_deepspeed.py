"""DeepSpeed: the shipped configs parse, and `deepspeed finetune/main.py` runs on CPU ranks."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.config import FinetuneConfig
from finetune.engine import read_ds_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "ds_configs").glob("finetune_*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_take_batch_sizes_from_the_flags(path):
    config = FinetuneConfig(task="sst-2", model="m", output_dir="o", data_dir="d", batch_size=16,
                            gradient_accumulation_steps=4, max_grad_norm=0.5)
    values = read_ds_config(str(path), config, world_size=8)
    # train_batch_size = micro batch x accumulation x ranks = 16 x 4 x 8
    assert values["train_batch_size"] == 512
    assert values["train_micro_batch_size_per_gpu"] == 16 and values["gradient_accumulation_steps"] == 4
    assert values["gradient_clipping"] == 0.5
    assert "auto" not in json.dumps(values)
    assert values["bf16" if "bf16" in path.name else "fp16"]["enabled"] is True


@pytest.mark.slow
def test_deepspeed_two_cpu_ranks_with_sift(tmp_path, tiny_model, sentiment_files):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", "29517",
               str(REPO / "finetune" / "main.py"), "--ds_config", str(REPO / "ds_configs" / "finetune_bf16.json"),
               "--task", "sst-2", "--data_dir", str(sentiment_files), "--model", tiny_model,
               "--output_dir", str(out), "--max_steps", "3", "--batch_size", "2", "--sift", "--no-progress_bar"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "of 2 x 1 x 2 examples, bf16, SiFT on" in result.stdout + result.stderr
    assert "accuracy" in json.loads((out / "eval_results.json").read_text())
    assert (out / "SST-2.tsv").is_file() and (out / "best" / "model.safetensors").is_file()
