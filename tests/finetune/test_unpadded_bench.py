"""bench/finetune_unpadded.py runs end to end (a tiny model, a few steps) and writes its figures."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GLUE = REPO.parent / "shared" / "data" / "glue"

pytestmark = pytest.mark.slow


def test_unpadded_bench_measures_both_distributions(tmp_path):
    if not (GLUE / "SST-2").is_dir() or not (GLUE / "RTE").is_dir():
        pytest.skip(f"SST-2 or RTE not found under {GLUE}")
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "bench.finetune_unpadded", "--hidden_size", "64", "--layers", "1",
                             "--steps", "2", "--warmup", "0", "--examples", "64", "--batch_size", "8",
                             "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["benchmark"] == "finetune_unpadded"
    for name in ("SST-2", "RTE"):
        figures = record["results"][name]
        assert 0.0 < figures["padding_fraction"] < 1.0 and figures["padded_tokens_per_s"] > 0
        assert figures["ratio"] == pytest.approx(figures["unpadded_tokens_per_s"] / figures["padded_tokens_per_s"])
