"""`sbatch slurm/pretrain_xxlarge.sh`, scaled down to one node, 2 tasks and a tiny model,
under a real one-node Slurm that the test starts (tests/slurm_harness.py)."""
from __future__ import annotations

import json
import subprocess

import pytest
from pretrain_helpers import REPO, TINY_MODEL, cpu_env, read_jsonl
from slurm_harness import slurm_log, wait_for_job

pytestmark = pytest.mark.slow


def test_sbatch_pretrain_xxlarge_scaled_down(slurm_cluster, corpus_shards, tmp_path):
    env, root = slurm_cluster
    output_dir = tmp_path / "run"
    job_env = {**cpu_env(), **env, "MODEL_CONFIG": "deberta-v2-xxlarge", "DS_CONFIG": "ds_configs/zero2.json",
               "DATA_DIR": str(corpus_shards), "OUTPUT_DIR": str(output_dir), "MAX_STEPS": "6",
               "GLOBAL_BATCH": "8", "MICRO_BATCH": "4",
               "EXTRA_ARGS": f"--set_model {TINY_MODEL},conv_kernel_size=3 --warmup_steps 1 --log_interval 2 "
                             f"--eval_interval 6 --eval_samples 16 --num_workers 0 --tensorboard false"}
    submit = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--gres=none",
                             "--cpus-per-task=1", "--time=30", f"--output={tmp_path / 'job.out'}",
                             "slurm/pretrain_xxlarge.sh"], cwd=REPO, env=job_env, capture_output=True, text=True,
                            timeout=30)
    assert submit.returncode == 0, submit.stderr + slurm_log(root)
    job = submit.stdout.strip().split(";")[0]

    # --time well above the script's --signal=TERM@600, which would otherwise fire at once.
    state = wait_for_job(job, env, 300)
    output = (tmp_path / "job.out").read_text() if (tmp_path / "job.out").is_file() else ""
    assert state == "COMPLETED", f"{state}\n{output[-6000:]}\n{slurm_log(root)}"
    assert "1 nodes, 2 ranks" in output
    steps = read_jsonl(output_dir / "metrics.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 7))
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["consumed_samples"] == 6 * 8
    assert (output_dir / "checkpoints" / "latest").read_text().strip() == "step_00000006"
