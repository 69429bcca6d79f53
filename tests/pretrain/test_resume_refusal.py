"""Resuming a pretraining run: a full disk during a save loses nothing, the logs hold each
step once after a resume, and a resume with a changed model, objective, tokenizer, global
batch or seed is refused before any weight is read, naming the fields (``--force_resume``
overrides it), and a checkpoint file damaged after the save is named. The runs are real ``pretrain/main.py`` processes (a world of one) on real
files; the full disk is a file-size limit on the process."""
from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pretrain_helpers import REPO, TINY_MODEL, cpu_env, explain, make_word_shards, read_jsonl, train_args

from pretrain.checkpoint import UNIVERSAL_CHECKPOINT_NOTE, run_identity
from pretrain.convert import main as convert_main
from training.checkpoint import ResumeError, check_same_run


def file_size_limit(limit: int):
    """For ``preexec_fn``: no file of the process may grow past ``limit`` bytes (a full disk for
    each file it writes); a write past it fails with EFBIG instead of killing the process."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def pretrain(data: Path, run: Path, limit: int | None = None, **flags) -> subprocess.CompletedProcess:
    values = dict(max_steps=4, save_interval=2, eval_interval=2, eval_samples=16, log_interval=1)
    return subprocess.run([sys.executable, "pretrain/main.py", *train_args(data, run, **{**values, **flags})],
                          cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=file_size_limit(limit) if limit else None)


@pytest.mark.slow
def test_full_disk_during_a_save_then_resume_then_changed_settings(tmp_path, capsys):
    data, run = make_word_shards(tmp_path, seed=1), tmp_path / "run"
    first = pretrain(data, run)
    assert first.returncode == 0, explain(first)
    assert "checking the sha256 of 2 shards" in first.stdout  # and the stamp spares the next starts
    checkpoints = run / "checkpoints"

    # Steps 5 and 6 run and are logged; the checkpoint of step 6 cannot be written (its files
    # are larger than the limit): the run ends with one line, and step 4 stays the latest.
    full = pretrain(data, run, limit=300_000, max_steps=6)
    assert full.returncode == 1, explain(full)
    assert "stamp found" in full.stdout
    lines = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in full.stderr, explain(full)
    assert f"saving the checkpoint of step 6 into {checkpoints / '.tmp-step_00000006'} failed" in lines[0]
    assert f"{checkpoints / 'step_00000004'} is still the latest" in lines[0]
    assert (checkpoints / "latest").read_text().strip() == "step_00000004"
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]

    # With space again, the same command resumes from step 4; the logs hold each step once.
    resumed = pretrain(data, run, max_steps=6)
    assert resumed.returncode == 0, explain(resumed)
    assert f"resumed from {checkpoints / 'step_00000004'}: step 4" in resumed.stdout
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in read_jsonl(run / "eval.jsonl")] == [0, 2, 4, 6]
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_00000002", "step_00000004", "step_00000006"]

    # Another model shape and global batch: refused before any weight is read, nothing touched.
    before = sorted(p.name for p in checkpoints.iterdir())
    changed = pretrain(data, run, max_steps=8, micro_batch_size=4,
                       set_model=TINY_MODEL.replace("num_hidden_layers=2", "num_hidden_layers=3"))
    assert changed.returncode == 2, explain(changed)
    lines = [line for line in changed.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in changed.stderr and "size mismatch" not in changed.stderr
    assert (f"{checkpoints / 'step_00000006'} was trained with other settings (global_batch 8 -> 4, "
            f"model_config.num_hidden_layers 2 -> 3)") in lines[0]
    assert f"another --output_dir than {run}" in lines[0] and "--force_resume" in lines[0]
    assert sorted(p.name for p in checkpoints.iterdir()) == before

    # A file of the newest checkpoint cut short after the save: named, with the way back to step 4.
    optimizer = checkpoints / "step_00000006" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:1000])
    damaged = pretrain(data, run, max_steps=8)
    assert damaged.returncode == 1, explain(damaged)
    lines = [line for line in damaged.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in damaged.stderr, explain(damaged)
    assert f"checkpoint {checkpoints / 'step_00000006'} is damaged: {optimizer}: 1000 bytes, saved with" in lines[0]
    assert "it takes step_00000004, the newest checkpoint before it" in lines[0]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:  # the converter says the same
        convert_main([str(checkpoints), "--output", str(tmp_path / "model")])
    assert exited.value.code == 1 and f"{optimizer}: 1000 bytes" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_what_a_resume_compares():
    state = {"global_batch": 8, "seed": 1, "world_size": 2,
             "model": {"objective": "rtd", "model_config": {"hidden_size": 64, "hidden_dropout_prob": 0.1},
                       "generator_config": {"hidden_size": 32}, "embedding_sharing": "gdes"}}
    same = run_identity(state, "abc")
    # Another world size (the universal-checkpoint path) and another dropout are not changes of the run.
    other_topology = {**state, "world_size": 4,
                      "model": {**state["model"], "model_config": {"hidden_size": 64, "hidden_dropout_prob": 0.0}}}
    check_same_run(same, run_identity(other_topology, "abc"), Path("ck"), Path("out"), force=False, log=print)
    changed = {**state, "model": {**state["model"], "objective": "mlm", "generator_config": {"hidden_size": 16}}}
    with pytest.raises(ResumeError) as refused:
        check_same_run(same, run_identity(changed, "def"), Path("ck"), Path("out"), force=False, log=print,
                       note=UNIVERSAL_CHECKPOINT_NOTE)
    message = str(refused.value)
    assert message.endswith("--force_resume" + UNIVERSAL_CHECKPOINT_NOTE)
    assert ("generator_config.hidden_size 32 -> 16, objective 'rtd' -> 'mlm', tokenizer sha256 'abc' -> 'def'"
            in message)
    # A field that a newer version of the code added is not a change.
    newer = {**state, "model": {**state["model"], "model_config": {**state["model"]["model_config"], "new": 1}}}
    check_same_run(same, run_identity(newer, "abc"), Path("ck"), Path("out"), force=False, log=print)
    notes = []
    check_same_run(same, run_identity(changed, "def"), Path("ck"), Path("out"), force=True, log=notes.append)
    assert notes and notes[0].startswith("--force_resume: resuming ck with changed settings: generator_config")
