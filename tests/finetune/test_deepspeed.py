"""The DeepSpeed side of finetuning: the shipped configs resolve, the precedence of flags,
config file, DeepSpeed JSON and defaults, and runs of `deepspeed finetune/main.py` on 2 CPU
ranks (SiFT, nothing left in /dev/shm, a non-finite loss stopping every rank)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.config import DEFAULT_MICRO_BATCH, FinetuneConfig, parse_args
from training.distributed import SHM_BUFFER, free_port, on_gpu
from training.ds_config import ConfigError, resolve_ds_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "ds_configs").glob("finetune_*.json"))
BASE = ["--task", "sst-2", "--model", "m", "--output_dir", "o", "--data_dir", "d"]


def resolve(config: FinetuneConfig, world: int = 1) -> dict:
    return resolve_ds_config(config.engine, config.optimizer, world, default_micro=DEFAULT_MICRO_BATCH)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_take_batch_sizes_from_the_flags(path):
    config = parse_args(BASE + ["--ds_config", str(path), "--batch_size", "16", "--gradient_accumulation_steps",
                                "4", "--max_grad_norm", "0.5"])
    if "fp16" in path.name and not on_gpu():
        with pytest.raises(ConfigError, match="fp16 needs a GPU"):
            resolve(config, world=8)
        return
    values = resolve(config, world=8)
    # train_batch_size = micro batch x accumulation x ranks = 16 x 4 x 8
    assert values["train_batch_size"] == 512
    assert values["train_micro_batch_size_per_gpu"] == 16 and values["gradient_accumulation_steps"] == 4
    assert values["gradient_clipping"] == 0.5
    assert "auto" not in json.dumps(values)
    assert values["bf16" if "bf16" in path.name else "fp16"]["enabled"] is True


def test_one_precedence_flags_config_file_json_defaults(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "gradient_clipping": 0.3}))
    # Defaults: finetuning's own, and the micro-batch default when nothing gives one.
    defaults = parse_args(BASE)
    assert (defaults.optimizer.lr, defaults.optimizer.warmup_ratio, defaults.optimizer.adam_beta2,
            defaults.optimizer.weight_decay, defaults.optimizer.adam_eps) == (2e-5, 0.1, 0.999, 0.01, 1e-6)
    assert defaults.engine.precision == "auto" and defaults.engine.ds_config is None
    values = resolve(defaults)
    assert values["train_micro_batch_size_per_gpu"] == DEFAULT_MICRO_BATCH and values["gradient_clipping"] == 1.0
    assert values.get("zero_optimization", {}).get("stage", 0) == 0 and values["bf16"]["enabled"] is False
    # The DeepSpeed JSON wins over the defaults ...
    values = resolve(parse_args(BASE + ["--ds_config", str(ds)]))
    assert values["train_micro_batch_size_per_gpu"] == 8 and values["gradient_clipping"] == 0.3
    # ... the config file over the JSON, and a flag (old names included) over the config file.
    run_file = tmp_path / "run.yaml"
    run_file.write_text("micro_batch_size: 4\nlr: 3.0e-5\nsift: true\nmax_grad_norm: 0.7\n")
    from_file = parse_args(BASE + ["--ds_config", str(ds), "--config", str(run_file)])
    assert resolve(from_file)["train_micro_batch_size_per_gpu"] == 4 and from_file.optimizer.lr == 3e-5
    assert from_file.run.sift is True and resolve(from_file)["gradient_clipping"] == 0.7
    flags = parse_args(BASE + ["--learning_rate", "5e-5", "--batch_size", "2", "--no-sift", "--ds_config", str(ds),
                               "--config", str(run_file), "--adam_epsilon", "1e-8", "--local_rank=1"])
    assert flags.optimizer.lr == 5e-5 and flags.optimizer.adam_eps == 1e-8 and flags.run.sift is False
    assert resolve(flags)["train_micro_batch_size_per_gpu"] == 2


def test_bad_flag_values_exit_naming_them(capsys):
    with pytest.raises(SystemExit):
        parse_args(BASE + ["--lr", "-1"])
    assert "lr=-1.0 must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(BASE + ["--sift", "maybe"])
    assert "unrecognized arguments: maybe" in capsys.readouterr().err


def cpu_env(**extra) -> dict:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def launch(tmp_path, tiny_model, data_dir, *flags, timeout=300, ds_config="finetune_bf16.json",
           **env) -> tuple[subprocess.CompletedProcess, int]:
    """`deepspeed --num_gpus 2 finetune/main.py ...` on CPU ranks; (result, master port).

    ``--recipe none``: these tests are about the JSON and the engine; the small-model SST-2
    recipe's global batch of 32 would otherwise set the accumulation."""
    port = free_port()
    launcher = [shutil.which("deepspeed")] if shutil.which("deepspeed") else \
        [sys.executable, "-m", "deepspeed.launcher.runner"]
    command = [*launcher, "--num_gpus", "2", "--master_port", str(port), "finetune/main.py",
               "--ds_config", str(REPO / "ds_configs" / ds_config), "--task", "sst-2",
               "--data_dir", str(data_dir), "--model", tiny_model, "--output_dir", str(tmp_path / "out"),
               "--batch_size", "2", "--recipe", "none", "--no-tensorboard", *flags]
    result = subprocess.run(command, cwd=REPO, env=cpu_env(**env), capture_output=True, text=True, timeout=timeout)
    return result, port


def shm_buffers(port: int) -> list[Path]:
    return [p for p in Path("/dev/shm").glob(f"{SHM_BUFFER}_*") if f"_{port}_" in p.name]


@pytest.mark.slow
def test_deepspeed_two_cpu_ranks_with_sift_leave_nothing_in_shm(tmp_path, tiny_model, sentiment_files):
    before = set(Path("/dev/shm").glob(f"{SHM_BUFFER}_*"))
    result, port = launch(tmp_path, tiny_model, sentiment_files, "--max_steps", "3", "--sift", "--log_interval", "1")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "of 2 x 1 x 2 examples | bf16 | ZeRO 2 | SiFT on" in output
    out = tmp_path / "out"
    assert "accuracy" in json.loads((out / "eval_results.json").read_text())
    assert (out / "SST-2.tsv").is_file() and (out / "best" / "model.safetensors").is_file()
    assert [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3]
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert not [p for p in out.iterdir() if p.name.startswith(".best.")]  # no temporary folder left
    assert not shm_buffers(port), "DeepSpeed's shared-memory buffers were left behind"
    assert not set(Path("/dev/shm").glob(f"{SHM_BUFFER}_*")) - before


@pytest.mark.slow
def test_nonfinite_loss_on_one_rank_stops_every_rank(tmp_path, tiny_model, sentiment_files):
    result, port = launch(tmp_path, tiny_model, sentiment_files, "--max_steps", "4", timeout=240,
                          FINETUNE_INJECT_NONFINITE_AT_STEP="2")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-4000:]
    assert "non-finite loss in step 2" in output
    # One message (rank 0's), not one per rank; and no update was made in step 2.
    assert output.count("error: non-finite loss in step 2") == 1, output[-4000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "non-finite loss" and summary["step"] == 1
    assert not shm_buffers(port)


@pytest.mark.slow
def test_zero3_saves_the_gathered_weights(tmp_path, tiny_model, sentiment_files):
    from deberta import load_model

    result, _ = launch(tmp_path, tiny_model, sentiment_files, "--max_steps", "2", ds_config="zero3_bf16.json")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "of 2 x 1 x 2 examples | bf16 | ZeRO 3" in output  # --batch_size 2 wins over the JSON's 8
    model = load_model(tmp_path / "out" / "best")  # every weight whole, not a rank's shard
    assert model.head == "sequence_classification" and tuple(model.classifier.weight.shape) == (2, 32)
