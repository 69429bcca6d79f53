"""bench/finetune_sst2.py runs end to end (a few steps) and writes its figures."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SST2 = REPO.parent / "shared" / "data" / "glue" / "SST-2"

pytestmark = pytest.mark.slow


def test_sst2_bench_writes_both_runs_and_the_baseline(tmp_path):
    if not SST2.is_dir():
        pytest.skip(f"SST-2 not found at {SST2}")
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "bench.finetune_sst2", "--max_train_examples", "64",
                             "--batch_size", "32", "--output_dir", str(tmp_path / "runs"), "--threads", "1",
                             "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert sorted(summary["runs"]) == ["plain", "sift"] and 0.4 < summary["majority_baseline"] < 0.6
    assert all(0.0 <= run["dev_accuracy"] <= 1.0 for run in summary["runs"].values())
    assert json.loads(out.read_text())["benchmark"] == "finetune_sst2"
