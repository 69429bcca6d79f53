"""bench/gpu_attention.py, the GPU script's measurements, on CPU: its FLOP count, its time
budget, the finetuning group's batches and their GLUE lengths, and (slow) the whole --dry-run
with every row group and part."""
import argparse
import json
import statistics

import pytest
import torch

from bench import glue_lengths, gpu_attention


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


def test_committed_lengths_match_the_data(tmp_path):
    """bench/glue_lengths.json is what bench.glue_lengths counts in ../shared/data/glue today."""
    if not (glue_lengths.GLUE / "RTE" / "train.tsv").is_file():
        pytest.skip(f"{glue_lengths.GLUE} is not on this machine")
    output = tmp_path / "lengths.json"
    assert glue_lengths.main(["--output", str(output)]) == 0
    regenerated, committed = json.loads(output.read_text()), json.loads(glue_lengths.LENGTHS_FILE.read_text())
    assert regenerated.pop("command") == f"python -m bench.glue_lengths --output {output}"
    assert committed.pop("command") == "python -m bench.glue_lengths"
    assert regenerated == committed
    committed = committed["distributions"]
    assert committed["SST-2"]["examples"] == 60614 and committed["RTE"]["examples"] == 1767  # data/README.md


def finetune_args(**changes):
    values = dict(batch=32, finetune_max_length=256, finetune_steps=200)
    return argparse.Namespace(**{**values, **changes})


def test_finetune_batches_follow_the_histogram():
    """Batch lengths are drawn from the committed histogram (their mean is its mean), cut at
    the maximum, and the same in every process (seeded)."""
    group = {group.name: group for group in gpu_attention.GROUPS}["v3-base-finetune"]
    assert group.distributions == ("SST-2", "RTE")
    for distribution, counts in glue_lengths.load().items():
        batches = gpu_attention.finetune_batches(group, finetune_args(finetune_max_length=10_000), distribution)
        assert len(batches) == 200 and all(len(batch) == 32 for batch in batches)
        drawn = [n for batch in batches for n in batch]
        mean = sum(n * c for n, c in counts.items()) / sum(counts.values())
        assert statistics.mean(drawn) == pytest.approx(mean, rel=0.05), distribution
        assert set(drawn) <= set(counts)
        cut = gpu_attention.finetune_batches(group, finetune_args(finetune_max_length=64), distribution)
        assert cut == [[min(n, 64) for n in batch] for batch in batches]
    described = gpu_attention.describe_batches(group, finetune_args())
    assert described["RTE"]["mean_length"] > 3 * described["SST-2"]["mean_length"]
    assert 0.3 < described["SST-2"]["padding_fraction"] < 0.9  # short sentences padded to a long one


def test_packed_and_padded_batches_hold_the_same_tokens():
    lengths = [5, 17, 3]
    packed = gpu_attention.classification_inputs(lengths, True, 100, torch.Generator().manual_seed(1), "cpu")
    padded = gpu_attention.classification_inputs(lengths, False, 100, torch.Generator().manual_seed(1), "cpu")
    assert packed["cu_seqlens"].tolist() == [0, 5, 22, 25] and packed["max_seqlen"] == 17
    assert padded["input_ids"].shape == (3, 17) and padded["attention_mask"].sum(1).tolist() == lengths
    assert torch.equal(padded["input_ids"][padded["attention_mask"].bool()], packed["input_ids"])
    assert torch.equal(padded["labels"], packed["labels"])


def test_packed_systems_run_in_the_finetuning_group_only():
    args = argparse.Namespace(systems="hf-eager,ours-triton-unpadded-compiled,ours-sdpa", dry_run=False)
    groups = {group.name: group for group in gpu_attention.GROUPS}
    assert gpu_attention.group_systems(groups["v3-base-mlm"], args) == ("hf-eager", "ours-sdpa")
    assert gpu_attention.group_systems(groups["v3-base-finetune"], args) == (
        "hf-eager", "ours-triton-unpadded-compiled", "ours-sdpa")
    assert gpu_attention.parse_system("ours-triton-unpadded-compiled") == ("triton", True, True)
    assert gpu_attention.parse_system("ours-sdpa") == ("sdpa", False, False)
    with pytest.raises(SystemExit):
        gpu_attention.main(["--dry-run", "--systems", "ours-nothing-unpadded", "--json", ""])


@pytest.mark.slow
def test_dry_run_measures_every_group(tmp_path, monkeypatch):
    """Every group (RTD on both sides, checkpointing, compiled rows, finetuning padded, packed
    and packed compiled) and the attention alone run end to end on tiny shapes; model TFLOP/s
    is tokens/s times the group's count; finetuning tokens/s counts real tokens only."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the workers run the Triton kernels on CPU
    path = tmp_path / "gpu.json"
    # Time enough for every row on a busy machine: the budget's cut is the test above.
    gpu_attention.main(["--dry-run", "--budget", "3600", "--json", str(path)])
    written = json.loads(path.read_text())
    results = written["results"]
    finetune = results["groups"].pop("v3-base-finetune")
    assert set(finetune["models"]) == set(gpu_attention.DRY_RUN_SYSTEMS[True])
    for system, figures in finetune["models"].items():
        for distribution, batches in finetune["distributions"].items():
            row = figures[distribution]
            assert "error" not in row, (system, distribution, row)
            # real tokens per step: the batch's mean length x 2 sequences, whatever the padding
            assert row["tokens_per_s"] * row["seconds_per_step"] == pytest.approx(2 * batches["mean_length"])
    assert set(finetune["summary"]["RTE"]) == {"best_peer", "ours-sdpa", "ours-triton-unpadded",
                                               "ours-sdpa-unpadded-compiled"}
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
    assert len(written["table"]["rows"]) == 4 * 3 + 2 * 4  # the finetuning group: 2 distributions x 4 systems
    assert [row[:2] for row in written["table"]["rows"] if row[0].startswith("v3-base-finetune")][:2] == [
        ["v3-base-finetune SST-2", "hf-eager"], ["v3-base-finetune SST-2", "ours-sdpa"]]
