"""fp16 on a CUDA device (DeepSpeed's CPU accelerator has no fp16): a non-finite loss is an
overflow that the dynamic loss scaler skips, counts and reports, and training goes on.
Skipped without a GPU."""
import json
import os
import subprocess

import pytest
from pretrain_helpers import REPO, deepspeed_command, explain, read_jsonl, train_args

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_fp16_overflow_skips_the_step_and_goes_on(corpus_shards, tmp_path):
    args = train_args(corpus_shards, tmp_path, ds_config="ds_configs/zero2_fp16.json", max_steps=8, log_interval=1)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PRETRAIN_INJECT_NONFINITE_AT_STEP": "4",
           "PYTHONPATH": str(REPO)}
    result = subprocess.run(deepspeed_command(args, ranks=1), cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, explain(result)
    assert "step 4: fp16 overflow, update skipped, loss scale now" in result.stdout
    steps = read_jsonl(tmp_path / "metrics.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 9))
    assert steps[3]["skipped"] is True  # (early steps may also overflow while the scale settles)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["skipped_steps"] >= 1
