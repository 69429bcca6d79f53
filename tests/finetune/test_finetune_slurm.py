"""`sbatch slurm/finetune.sh` under a real one-node Slurm (tests/slurm_harness.py), stopped
twice and requeued: once as the time limit does it (USR1 to the batch shell, which has the
ranks save and requeues the job), once as preemption does (`scontrol requeue`: SIGTERM to
the ranks, which save). The run ends in its third allocation exactly as an uninterrupted run."""
from __future__ import annotations

import json
import subprocess
import time

import pytest
from slurm_harness import slurm_log
from test_deepspeed import REPO, cpu_env, launch
from test_resume import outcome

pytestmark = pytest.mark.slow

FLAGS = ["--max_steps", "12", "--eval_interval", "3", "--log_interval", "1", "--lr", "3e-3", "--sift",
         "--metric_for_best", "loss", "--max_seq_length", "32", "--precision", "fp32"]


def job_info(job: str, env: dict) -> dict:
    text = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return dict(word.split("=", 1) for word in text.split() if "=" in word)


def test_finetune_job_requeued_at_the_time_limit_and_on_preemption_ends_as_uninterrupted(
        slurm_cluster, tmp_path, tiny_model, sentiment_files):
    env, root = slurm_cluster
    output_dir, log = tmp_path / "run", tmp_path / "job.out"
    job_env = {**cpu_env(), **env, "TASK": "sst-2", "DATA_DIR": str(sentiment_files), "MODEL": tiny_model,
               "OUTPUT_DIR": str(output_dir), "DS_CONFIG": "ds_configs/finetune_bf16.json", "SAVE_INTERVAL": "100",
               "EXTRA_ARGS": " ".join(["--batch_size", "2", "--recipe", "none", "--no-tensorboard", *FLAGS]),
               # rank 0 waits after steps 4 and 8 until the test has stopped the job there
               "FINETUNE_HOLD_AT_STEPS": "4,8"}
    submit = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--gres=none",
                             "--cpus-per-task=1", "--time=30", f"--output={log}", "slurm/finetune.sh"],
                            cwd=REPO, env=job_env, capture_output=True, text=True, timeout=30)
    assert submit.returncode == 0, submit.stderr + slurm_log(root)
    job = submit.stdout.strip().split(";")[0]

    # Each hold is answered once: the first as the time limit, the others as preemption.
    answered, pending_since, deadline = 0, None, time.time() + 600
    while time.time() < deadline:
        info = job_info(job, env)
        text = log.read_text() if log.is_file() else ""
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            break
        pending_since = (pending_since or time.time()) if info.get("JobState") == "PENDING" else None
        if pending_since and info.get("Restarts", "0") != "0" and time.time() - pending_since > 3:
            # A requeued job waits two minutes (BeginTime) before it may start again. A few seconds
            # are enough here: the credential of the last allocation is revoked up to its second.
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, capture_output=True)
        elif text.count("test hook: holding after step") > answered and info.get("JobState") == "RUNNING":
            stop = ["scancel", "--batch", "--signal=USR1", job] if answered == 0 else ["scontrol", "requeue", job]
            subprocess.run(stop, env=env, check=True, capture_output=True)
            answered += 1
        time.sleep(1)
    text = log.read_text()
    assert job_info(job, env).get("JobState") == "COMPLETED", f"{text[-6000:]}\n{slurm_log(root)}"

    assert "requeue: job" in text and "the time limit is near (USR1)" in text and "saved; requeueing" in text
    assert "SIGTERM (preemption or scancel)" in text and "allocation 3" in text
    assert text.count("resumed from") == 2 and "step 5/12" in text and "step 9/12" in text
    steps = [json.loads(line)["step"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # each step once, across three allocations
    assert json.loads((output_dir / "summary.json").read_text())["status"] == "completed"

    reference = tmp_path / "reference"
    reference.mkdir()
    result, _ = launch(reference, tiny_model, sentiment_files, *FLAGS)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert outcome(output_dir) == outcome(reference / "out")
