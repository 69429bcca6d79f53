"""bench/gpu_attention.py, the GPU script's measurements, on CPU: its FLOP count, its time
budget, and (slow) the whole --dry-run with every row group and part."""
import argparse
import json

import pytest

from bench import gpu_attention


def test_flop_count_is_the_documented_one():
    """1.30 GFLOP per token and step at v3-base MLM 512, as the module docstring works it out,
    and the same for ours and the peers (one count per group)."""
    args = argparse.Namespace(seq=512, model_overrides={})
    groups = {group.name: group for group in gpu_attention.GROUPS}
    per_token = 12 * (14_155_776 + 3_145_728 + 2_359_296) + 2 * (768 * 768 + 768 * 128_100)
    assert gpu_attention.step_flops_per_token(groups["v3-base-mlm"], args) == pytest.approx(3 * per_token)
    # RTD: a 6-layer generator with the full output, a 12-layer discriminator with one logit.
    layer = 14_155_776 + 3_145_728 + 2_359_296
    rtd = 6 * layer + 2 * (768 * 768 + 768 * 128_100) + 12 * layer + 2 * (768 * 768 + 768)
    assert gpu_attention.step_flops_per_token(groups["v3-base-rtd"], args) == pytest.approx(3 * rtd)


def test_spent_budget_is_recorded_and_written(tmp_path):
    """A budget too small for any system: every row says so in the JSON, and nothing runs."""
    path = tmp_path / "gpu.json"
    record = gpu_attention.main(["--dry-run", "--budget", "1", "--json", str(path)])
    written = json.loads(path.read_text())["results"]
    assert written == json.loads(json.dumps(record))
    assert list(written["groups"]) == [group.name for group in gpu_attention.GROUPS]  # headline first
    for group in written["groups"].values():
        assert group["models"] and all("time budget" in row["error"] for row in group["models"].values())
    assert all("time budget" in row["error"] for row in written["kernels"].values())


@pytest.mark.slow
def test_dry_run_measures_every_group(tmp_path, monkeypatch):
    """Every group (RTD on both sides, checkpointing, compiled rows) and the attention alone
    run end to end on tiny shapes; model TFLOP/s is tokens/s times the group's count."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the workers run the Triton kernels on CPU
    path = tmp_path / "gpu.json"
    gpu_attention.main(["--dry-run", "--json", str(path)])
    written = json.loads(path.read_text())
    results = written["results"]
    for name, group in results["groups"].items():
        assert set(group["models"]) == {"hf-eager", "hf-compile", "ours-sdpa-compiled"}, name
        for system, figures in group["models"].items():
            assert "error" not in figures, (name, system, figures)
            assert figures["model_tflops"] == pytest.approx(
                figures["tokens_per_s"] * group["step_gflop_per_token"] / 1e3), (name, system)
        assert group["summary"]["best_peer"] in ("hf-eager", "hf-compile")
    assert results["groups"]["xxlarge-mlm"]["activation_checkpointing"] is True
    for system in ("sdpa", "triton"):
        assert results["kernels"][system]["32"]["ms_forward_backward"] > 0
    assert len(written["table"]["rows"]) == 4 * 3
