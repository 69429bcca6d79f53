"""Finetuning runs that stop (SIGTERM, SIGKILL) and resume end exactly as runs that never
stopped: the same evaluations, logs, eval_results.json and best/ weights, byte for byte."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from finetune import FinetuneConfig, Trainer
from finetune.checkpoint import EpochOrder, StopSignal
from finetune.config import parse_args
from finetune.main import main
from training.outputs import truncate_jsonl

REPO = Path(__file__).resolve().parents[2]
# 24 training sentences in micro-batches of 5: 5 per epoch, the last of 4; with 2 per step
# an optimizer step straddles each epoch's end. Dropout and SiFT's noise draw from the RNG.
SETTINGS = dict(task="sst-2", micro_batch_size=5, grad_accum=2, eval_batch_size=8, lr=1e-3, max_seq_length=32,
                max_steps=8, log_interval=1, progress_bar=False, tensorboard=False, sift=True, seed=3,
                metric_for_best="loss")  # lower is better: best/ follows every evaluation


class StopAfterSteps(StopSignal):
    """SIGTERM as a test gives it: requested from the ``steps``-th step's agreement on."""

    def __init__(self, steps: int):
        super().__init__()
        self.asked = -steps

    @property
    def requested(self) -> bool:
        self.asked += 1
        return self.asked >= 0

    @requested.setter
    def requested(self, value) -> None:  # the signal handler's write; the count decides
        pass


def config(output_dir, data_dir, model, **changes) -> FinetuneConfig:
    return FinetuneConfig.create(output_dir=str(output_dir), data_dir=str(data_dir), model=model,
                                 **{**SETTINGS, **changes})


def outcome(output_dir: Path) -> dict:
    """Everything a run leaves that must not depend on whether it was stopped."""
    def lines(name):
        records = [json.loads(line) for line in (output_dir / name).read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]
    return {"eval_results": json.loads((output_dir / "eval_results.json").read_text()),
            "eval": lines("eval.jsonl"), "metrics": lines("metrics.jsonl"),
            "weights": (output_dir / "best" / "model.safetensors").read_bytes(),
            "predictions": (output_dir / "predictions_dev.tsv").read_text()}


def test_truncate_jsonl_keeps_each_step_once(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 8)) + '{"step": 8, "lo')
    assert truncate_jsonl(log, 5) == 3  # steps 6 and 7, and the line a kill cut short
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert truncate_jsonl(tmp_path / "absent.jsonl", 5) == 0


def test_epoch_order_continues_mid_epoch_on_every_rank():
    """The order is a function of (seed, epoch); started after 6 samples, each rank gets the rest of its share."""
    ranks = [EpochOrder(11, seed=4, rank=r, world=2) for r in range(2)]
    full = [list(order) for order in ranks]
    assert sorted(full[0] + full[1]) == sorted(list(range(11)) + [full[0][0]])  # padded by wrapping: 12 = 2 x 6
    for order in ranks:
        order.set_position(0, consumed=6)
    assert [list(order) for order in ranks] == [full[0][3:], full[1][3:]] and len(ranks[0]) == 3
    for order in ranks:
        order.set_position(1)
    assert [list(order) for order in ranks] != full  # another epoch, another order
    again = EpochOrder(11, seed=4, rank=0, world=2)
    again.set_position(1)
    assert list(again) == list(ranks[0])


def test_stop_signal_notes_sigterm_and_gives_the_handler_back():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignal() as stop:
        with stop:  # a trainer inside a --seeds loop enters it again
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested  # noted, not obeyed: the process goes on to the end of its step
        assert signal.getsignal(signal.SIGTERM) == stop._note
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_saves_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path, tiny_model, sentiment_files):
    straight = tmp_path / "straight"
    Trainer(config(straight, sentiment_files, tiny_model)).train()

    stopped = tmp_path / "stopped"
    trainer = Trainer(config(stopped, sentiment_files, tiny_model), StopAfterSteps(3))
    trainer.train()
    assert trainer.status == "preempted" and trainer.step == 3
    assert json.loads((stopped / "summary.json").read_text())["status"] == "preempted"
    assert (stopped / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    assert [json.loads(line)["step"] for line in (stopped / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]

    resumed = Trainer(config(stopped, sentiment_files, tiny_model))
    resumed.train()
    assert resumed.status == "completed"
    assert outcome(stopped) == outcome(straight)
    assert not (stopped / "checkpoints").exists()  # a completed run keeps best/, not the optimizer state


def test_resume_refuses_changed_settings_naming_them(tmp_path, tiny_model, sentiment_files, capsys):
    output_dir = tmp_path / "run"
    base = ["--task", "sst-2", "--data_dir", str(sentiment_files), "--model", tiny_model, "--output_dir",
            str(output_dir), "--micro_batch_size", "5", "--grad_accum", "2", "--max_seq_length", "32",
            "--max_steps", "8", "--sift", "--seed", "3", "--no-tensorboard", "--no-progress_bar"]
    Trainer(parse_args(base + ["--lr", "1e-3"]), StopAfterSteps(2)).train()
    assert main(base + ["--lr", "2e-3", "--max_seq_length", "48"]) == 2
    error = capsys.readouterr().err
    assert "lr 0.001 -> 0.002" in error and "max_seq_length 32 -> 48" in error
    assert f"another --output_dir than {output_dir}" in error and "--force_resume" in error
    assert (output_dir / "checkpoints" / "latest").read_text().strip() == "step_00000002"  # nothing touched

    # Where it reports and how often it saves may change; the run goes on from step 2.
    assert main(base + ["--lr", "1e-3", "--log_interval", "4", "--save_interval", "3"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "step_00000002: step 2/8" in out
    assert json.loads((output_dir / "summary.json").read_text())["status"] == "completed"
    # Run again when complete: nothing to do, and changed settings are refused as well.
    assert main(base + ["--lr", "1e-3"]) == 0
    assert "completed before (best at step" in capsys.readouterr().out
    assert main(base + ["--lr", "5e-3"]) == 2 and "lr 0.001 -> 0.005" in capsys.readouterr().err


def test_force_resume_continues_with_changed_settings(tmp_path, tiny_model, sentiment_files):
    output_dir = tmp_path / "run"
    Trainer(config(output_dir, sentiment_files, tiny_model), StopAfterSteps(2)).train()
    trainer = Trainer(config(output_dir, sentiment_files, tiny_model, lr=2e-3, force_resume=True))
    trainer.train()
    assert trainer.status == "completed" and trainer.step == 8
    steps = [json.loads(line)["step"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def cli_env() -> dict:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@pytest.mark.slow
def test_sigkill_mid_run_then_the_same_command_ends_as_an_uninterrupted_run(tmp_path, tiny_model, sentiment_files):
    """A real SIGKILL after step 7: the checkpoint of step 6 is the newest, step 7 is redone."""
    def command(output_dir):
        return [sys.executable, "-m", "finetune", "--task", "sst-2", "--data_dir", str(sentiment_files),
                "--model", tiny_model, "--output_dir", str(output_dir), "--micro_batch_size", "5", "--grad_accum",
                "2", "--max_seq_length", "32", "--max_steps", "10", "--eval_interval", "3", "--log_interval", "1",
                "--save_interval", "3", "--lr", "1e-3", "--sift", "--seed", "3", "--no-tensorboard"]

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run = subprocess.run(command(straight), cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    run = subprocess.run(command(killed), cwd=REPO, env={**cli_env(), "FINETUNE_KILL_AT_STEP": "7"},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == -9, run.stderr[-3000:]
    assert (killed / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    assert [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()][-1] == 7
    run = subprocess.run(command(killed), cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resumed from" in run.stdout and "step 6/10" in run.stdout
    assert outcome(killed) == outcome(straight)
    assert [r["step"] for r in outcome(killed)["eval"]] == [3, 6, 9, 10]
