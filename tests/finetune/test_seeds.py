"""--seeds: one run per seed in OUTPUT/seed_<s>/, each ending exactly as a single run with that
seed (nothing leaks from one run to the next), a summary with the median and spread, and a
rerun that skips the finished seeds and resumes the stopped one."""
import json
import statistics
import weakref

import pytest
from test_deepspeed import REPO, launch
from test_resume import StopAfterSteps, outcome

from finetune.config import parse_args
from finetune.main import main
from finetune.seeds import run_seeds
from training.distributed import init_distributed, shutdown


def command(data_dir, model, output_dir, *extra) -> list[str]:
    # Dropout, SiFT's noise, the head's initial weights and the data order all follow the seed.
    return ["--task", "sst-2", "--data_dir", str(data_dir), "--model", model, "--output_dir", str(output_dir),
            "--micro_batch_size", "4", "--max_seq_length", "32", "--max_steps", "6", "--eval_interval", "2",
            "--log_interval", "1", "--lr", "3e-3", "--sift", "--metric_for_best", "loss", "--no-tensorboard",
            "--no-progress_bar", *extra]


def test_each_seed_ends_as_its_single_run_and_the_summary_is_its_statistics(tmp_path, tiny_model,
                                                                          sentiment_files, capsys):
    seeds = tmp_path / "seeds"
    assert main(command(sentiment_files, tiny_model, seeds, "--seed", "5", "--seeds", "2")) == 0
    printed = capsys.readouterr().out
    # The second run shares its processes with the first, yet ends exactly as a run of its own.
    single = tmp_path / "single"
    assert main(command(sentiment_files, tiny_model, single, "--seed", "6")) == 0
    assert outcome(seeds / "seed_6") == outcome(single)
    assert outcome(seeds / "seed_5") != outcome(single)

    summary = json.loads((seeds / "seeds_summary.json").read_text())
    assert summary["seeds"] == [5, 6] and summary["task"] == "sst-2"
    losses = [json.loads((seeds / f"seed_{s}" / "eval_results.json").read_text())["loss"] for s in (5, 6)]
    assert [run["best"]["loss"] for run in summary["runs"]] == losses
    assert summary["metrics"]["loss"] == {"median": (losses[0] + losses[1]) / 2, "mean": statistics.fmean(losses),
                                          "min": min(losses), "max": max(losses),
                                          # the sample std of two values, to rounding
                                          "std": pytest.approx(abs(losses[0] - losses[1]) / 2 ** 0.5, rel=1e-12)}
    assert "accuracy" in summary["metrics"] and "step" not in summary["metrics"]
    table = printed[printed.index("seed    "):].splitlines()
    assert table[1].split()[0] == "5" and table[2].split()[0] == "6"
    assert [line.split()[0] for line in table[3:7]] == ["median", "min", "max", "std"]
    assert f"{summary['metrics']['loss']['median']:.4f}" in table[3]


def test_a_rerun_skips_finished_seeds_and_resumes_the_stopped_one(tmp_path, tiny_model, sentiment_files, capsys):
    root = tmp_path / "seeds"
    argv = command(sentiment_files, tiny_model, root, "--seeds", "8,3")
    init_distributed()
    try:
        # The flag is read before each seed and at each step: the 11th read is step 3 of seed 3,
        # after seed 8 (6 steps) completed.
        assert run_seeds(parse_args(argv), StopAfterSteps(11)) is None
    finally:
        shutdown()
    assert json.loads((root / "seed_8" / "summary.json").read_text())["status"] == "completed"
    assert (root / "seed_3" / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    assert not (root / "seeds_summary.json").exists()
    finished = (root / "seed_8" / "eval_results.json").stat().st_mtime_ns
    capsys.readouterr()

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "train:" not in out.split("=== seed 3")[0]  # seed 8 is not loaded again, let alone trained
    assert "resumed from" in out and (root / "seed_8" / "eval_results.json").stat().st_mtime_ns == finished
    single = tmp_path / "single"
    assert main(command(sentiment_files, tiny_model, single, "--seed", "3")) == 0
    assert outcome(root / "seed_3") == outcome(single)
    assert json.loads((root / "seeds_summary.json").read_text())["seeds"] == [8, 3]

    # A finished seed run again with other settings is refused, as a resume is.
    assert main(argv + ["--lr", "1e-3"]) == 2
    assert "lr 0.003 -> 0.001" in capsys.readouterr().err


def test_bad_seeds_are_refused_naming_the_flag(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--task", "sst-2", "--model", "m", "--output_dir", "o", "--data_dir", "d", "--seeds", "2,2"])
    assert "--seeds='2,2' is invalid" in capsys.readouterr().err


@pytest.mark.slow
def test_seeds_under_the_deepspeed_launcher_equal_single_runs(tmp_path, tiny_model, sentiment_files):
    """Two CPU ranks, ZeRO-2: the second seed's run, after the first in the same processes,
    ends byte for byte as a launch of its own."""
    flags = ["--max_steps", "4", "--eval_interval", "2", "--lr", "3e-3", "--sift", "--metric_for_best", "loss",
             "--max_seq_length", "32", "--precision", "fp32"]
    seeds_dir, single_dir = tmp_path / "seeds", tmp_path / "single"
    seeds_dir.mkdir(), single_dir.mkdir()
    result, _ = launch(seeds_dir, tiny_model, sentiment_files, *flags, "--seed", "5", "--seeds", "2")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    result, _ = launch(single_dir, tiny_model, sentiment_files, *flags, "--seed", "6")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert outcome(seeds_dir / "out" / "seed_6") == outcome(single_dir / "out")
    assert json.loads((seeds_dir / "out" / "seeds_summary.json").read_text())["seeds"] == [5, 6]


def test_every_seeds_engine_is_gone_when_its_run_ends(tmp_path, tiny_model, sentiment_files, monkeypatch):
    """ZeRO-2's gradient hooks tie an engine to its parameters through autograd, where the
    collector cannot free it: each run releases its engine, or the next seed's run, and the
    process group's shutdown, would still find it with its optimizer state and process groups."""
    import finetune.main
    import finetune.trainer
    engines = []

    def recorded(*args, **kwargs):
        engine = build_engine(*args, **kwargs)
        engines.append(weakref.ref(engine))
        return engine

    def recorded_shutdown():
        shutdown()  # which collects what is garbage
        alive_at_shutdown.extend(engine for engine in engines if engine() is not None)

    build_engine, shutdown, alive_at_shutdown = finetune.trainer.build_engine, finetune.main.shutdown, []
    monkeypatch.setattr(finetune.trainer, "build_engine", recorded)
    monkeypatch.setattr(finetune.main, "shutdown", recorded_shutdown)
    argv = command(sentiment_files, tiny_model, tmp_path / "seeds", "--seeds", "2", "--max_steps", "2",
                   "--ds_config", str(REPO / "ds_configs" / "finetune_bf16.json"), "--precision", "fp32")
    assert main(argv) == 0
    assert len(engines) == 2 and alive_at_shutdown == []
