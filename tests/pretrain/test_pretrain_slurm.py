"""`sbatch slurm/pretrain_xxlarge.sh`, scaled down to one node, 2 tasks and a tiny model,
under a real one-node Slurm that the test starts (tests/slurm_harness.py): straight through,
and across three allocations (the time limit's USR1, then a preemption) with the same losses."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from pretrain_helpers import REPO, TINY_MODEL, cpu_env, read_jsonl, step_losses
from slurm_harness import slurm_log, wait_for, wait_for_job

pytestmark = pytest.mark.slow
# Enough steps that the signals land while the run still has some to go: a step of this tiny
# model takes about 0.05 s on an idle machine.
MAX_STEPS = 120


def submit(env: dict, root: Path, data_dir: Path, output_dir: Path, log: Path) -> str:
    job_env = {**cpu_env(), **env, "MODEL_CONFIG": "deberta-v2-xxlarge", "DS_CONFIG": "ds_configs/zero2.json",
               "DATA_DIR": str(data_dir), "OUTPUT_DIR": str(output_dir), "MAX_STEPS": str(MAX_STEPS),
               "GLOBAL_BATCH": "8", "MICRO_BATCH": "4",
               "EXTRA_ARGS": f"--set_model {TINY_MODEL},conv_kernel_size=3 --warmup_steps 1 --log_interval 2 "
                             f"--eval_interval 8 --eval_samples 16 --num_workers 0 --tensorboard false"}
    # --time well above the script's --signal=B:USR1@600, which would otherwise fire at once.
    result = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--gres=none",
                             "--cpus-per-task=1", "--time=30", f"--output={log}", "slurm/pretrain_xxlarge.sh"],
                            cwd=REPO, env=job_env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr + slurm_log(root)
    return result.stdout.strip().split(";")[0]


def job_field(job: str, env: dict, field: str) -> str:
    text = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return next((word.split("=", 1)[1] for word in text.split() if word.startswith(field + "=")), "")


def test_sbatch_pretrain_xxlarge_scaled_down(slurm_cluster, corpus_shards, tmp_path):
    env, root = slurm_cluster
    output_dir, log = tmp_path / "run", tmp_path / "job.out"
    job = submit(env, root, corpus_shards, output_dir, log)
    state = wait_for_job(job, env, 300)
    output = log.read_text() if log.is_file() else ""
    assert state == "COMPLETED", f"{state}\n{output[-6000:]}\n{slurm_log(root)}"
    assert "1 nodes, 2 ranks" in output
    steps = read_jsonl(output_dir / "metrics.jsonl")
    assert [s["step"] for s in steps] == list(range(1, MAX_STEPS + 1))
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["consumed_samples"] == MAX_STEPS * 8
    assert (output_dir / "checkpoints" / "latest").read_text().strip() == f"step_{MAX_STEPS:08d}"

    # The same job across three allocations: the time limit's warning (what --signal=B:USR1
    # sends), then a preemption (SIGTERM to the job, which Slurm then requeues).
    interrupted, log2 = tmp_path / "interrupted", tmp_path / "job2.out"
    job = submit(env, root, corpus_shards, interrupted, log2)

    def after_steps(steps: int):
        metrics = interrupted / "metrics.jsonl"
        # the last step logged (every --log_interval steps), not the number of lines: the signal
        # must come while the run still has steps to go
        wait_for(lambda: metrics.is_file() and max((r["step"] for r in read_jsonl(metrics)), default=0) >= steps
                 and job_field(job, env, "JobState") == "RUNNING", 240, f"step {steps} of job {job}")

    def back_in_queue(restarts: int):
        wait_for(lambda: job_field(job, env, "Restarts") == str(restarts), 120, f"restart {restarts}")
        # Slurm holds a requeued job back for a while (its BeginTime); start it now, but not in
        # the second of the requeue, whose revoked credential would refuse the new allocation.
        time.sleep(2)
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, capture_output=True)

    after_steps(3)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=env, check=True)
    back_in_queue(1)
    after_steps(int(json.loads((interrupted / "summary.json").read_text())["step"]) + 3)
    # Preemption: SIGTERM to the batch shell and to the ranks (srun itself would end its tasks
    # on a SIGTERM of its own); the ranks save, the job ends, and Slurm requeues it.
    for target in (["--batch"], []):
        subprocess.run(["scancel", *target, "--signal=TERM", job], env=env, check=True)
    wait_for(lambda: job_field(job, env, "JobState") == "COMPLETED", 120, "the preempted job to save and end")
    subprocess.run(["scontrol", "requeue", job], env=env, check=True)  # what PreemptMode=REQUEUE does
    back_in_queue(2)
    state = wait_for_job(job, env, 300)
    output = log2.read_text()
    assert state == "COMPLETED", f"{state}\n{output[-6000:]}\n{slurm_log(root)}"
    summary = json.loads((interrupted / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == MAX_STEPS, output[-6000:]
    assert "the time limit is near (USR1)" in output and "requeueing it to continue" in output
    assert "SIGTERM (preemption or scancel)" in output and output.count("SIGTERM: saving at step") == 2
    assert "allocation 3" in output and output.count("resumed from") == 2, output[-6000:]
    resumed_at = [int(line.split("step_")[1][:8]) for line in output.splitlines() if "resumed from" in line]
    assert 3 <= resumed_at[0] < resumed_at[1] < MAX_STEPS  # each allocation went on from the last
    assert step_losses(interrupted) == step_losses(output_dir)
