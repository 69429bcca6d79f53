"""bench/pretrain_step.py runs both systems at one shape and reports their ratio."""
import json
import subprocess
import sys

import pytest
from pretrain_helpers import REPO, TINY_MODEL, cpu_env, explain

pytestmark = pytest.mark.slow


def test_bench_reports_both_systems_and_their_ratio(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "bench.pretrain_step", "--set_model", TINY_MODEL, "--seq_len", "64",
                             "--batch_size", "4", "--steps", "2", "--warmup", "1", "--json", str(out)],
                            cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, explain(result)
    assert "ratio ours / transformers:" in result.stdout
    results = json.loads(out.read_text())["results"]
    for name in ("ours", "transformers"):
        assert results[name]["tokens_per_s"] > 0 and results[name]["model_tflops"] > 0
    assert results["ratio"] == pytest.approx(results["ours"]["tokens_per_s"] / results["transformers"]["tokens_per_s"])
