"""Pretraining runs with 2 CPU ranks through the real `deepspeed` launcher.

Each run is a tiny model (2 layers, hidden 64) on shards of the shared corpus; runs that
several tests inspect are module fixtures so they happen once.
"""
from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from pretrain_helpers import (REPO, cpu_env, deepspeed_command, explain, read_jsonl, run_deepspeed, step_losses,
                      train_args)

from deberta import load_model

pytestmark = pytest.mark.slow


def _evals(output_dir):
    return read_jsonl(output_dir / "eval.jsonl")


@pytest.fixture(scope="module")
def mlm_zero2(corpus_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("mlm_zero2")
    result = run_deepspeed(train_args(corpus_shards, out, max_steps=30, eval_interval=30, save_interval=15))
    assert result.returncode == 0, explain(result)
    return out


@pytest.fixture(scope="module")
def rtd_zero3(corpus_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("rtd_zero3")
    result = run_deepspeed(train_args(corpus_shards, out, ds_config="ds_configs/zero3.json", objective="rtd",
                                      max_steps=30, eval_interval=30, save_interval=30,
                                      activation_checkpointing="true"))
    assert result.returncode == 0, explain(result)
    return out


def test_mlm_zero2_validation_loss_falls(mlm_zero2):
    evals = _evals(mlm_zero2)
    assert [e["step"] for e in evals] == [0, 30]
    assert evals[-1]["mlm_loss"] < evals[0]["mlm_loss"] - 0.2, evals
    assert evals[-1]["mlm_acc"] > evals[0]["mlm_acc"]
    summary = json.loads((mlm_zero2 / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 30 and summary["consumed_samples"] == 30 * 16
    # keep 3 checkpoints: 15 and the final 30
    assert sorted(p.name for p in (mlm_zero2 / "checkpoints").glob("step_*")) == ["step_00000015", "step_00000030"]
    assert (mlm_zero2 / "checkpoints" / "latest").read_text().strip() == "step_00000030"


def test_rtd_zero3_validation_loss_falls(rtd_zero3):
    first, last = _evals(rtd_zero3)
    assert last["loss"] < first["loss"] - 1.0, (first, last)
    assert last["rtd_loss"] < first["rtd_loss"] and last["mlm_loss"] < first["mlm_loss"]
    assert 0.0 <= last["rtd_auc"] <= 1.0 and last["rtd_auc"] > first["rtd_auc"]
    steps = read_jsonl(rtd_zero3 / "metrics.jsonl")
    assert len(steps) == 30 and all(0.0 < s["replaced_fraction"] < 0.2 for s in steps)


def _compare_with_transformers(native_dir, hf_dir):
    transformers = pytest.importorskip("transformers")
    ours = load_model(native_dir)
    theirs = transformers.AutoModel.from_pretrained(hf_dir).eval()
    ids = torch.randint(5, 1000, (2, 48))
    mask = torch.ones_like(ids)
    mask[1, 40:] = 0
    with torch.no_grad():
        a = ours(ids, attention_mask=mask).hidden_states
        b = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        c = load_model(hf_dir)(ids, attention_mask=mask)  # our loader on the HF folder
    real = mask.bool()
    assert torch.allclose(a[real], b[real], atol=1e-5), (a - b)[real].abs().max()
    return ours, c


def _convert(checkpoints, output, fmt):
    result = subprocess.run(["python", "-m", "pretrain.convert", str(checkpoints), "--output", str(output),
                             "--format", fmt], cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, explain(result)


def test_convert_zero2_mlm(mlm_zero2, tmp_path):
    _convert(mlm_zero2 / "checkpoints", tmp_path / "native", "native")
    _convert(mlm_zero2 / "checkpoints", tmp_path / "hf", "hf")
    ours, from_hf = _compare_with_transformers(tmp_path / "native", tmp_path / "hf")
    assert type(ours).__name__ == "DebertaForMaskedLM" and ours.config.emd_layers == 2
    ids = torch.randint(5, 1000, (2, 48))
    with torch.no_grad():  # the HF folder keeps the EMD fields, so our loader gives the same MLM
        assert torch.allclose(ours(ids).logits, load_model(tmp_path / "hf")(ids).logits, atol=1e-5)
    # The converted weights are the trained ones: its validation-like loss is far below a fresh model's.
    config = json.loads((tmp_path / "native" / "config.json").read_text())
    assert config["pretraining"]["step"] == 30 and config["head"] == "masked_lm"


def test_convert_zero3_rtd(rtd_zero3, tmp_path):
    _convert(rtd_zero3 / "checkpoints", tmp_path / "native", "native")
    _convert(rtd_zero3 / "checkpoints", tmp_path / "hf", "hf")
    discriminator, _ = _compare_with_transformers(tmp_path / "native", tmp_path / "hf")
    assert type(discriminator).__name__ == "DebertaForReplacedTokenDetection"
    generator = load_model(tmp_path / "native" / "generator")
    assert type(generator).__name__ == "DebertaForMaskedLM"
    assert generator.config.num_hidden_layers == 1 and discriminator.config.num_hidden_layers == 2
    transformers = pytest.importorskip("transformers")
    hf_generator = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf" / "generator")
    assert hf_generator.config.num_hidden_layers == 1
    # GDES folded: the discriminator table = generator table + the learned (non-zero) delta.
    delta = discriminator.deberta.embeddings.word_embeddings.weight - generator.deberta.embeddings.word_embeddings.weight
    assert delta.abs().max() > 0
    assert not any("delta" in k for k in discriminator.state_dict())
    # Our own pretrained discriminator finetunes end to end (SST-2 sentences of the shared data).
    sst2 = REPO.parent / "shared" / "data" / "glue" / "SST-2"
    finetuned = subprocess.run(
        [sys.executable, "-m", "finetune", "--task", "sst-2", "--data_dir", str(sst2), "--model",
         str(tmp_path / "native"), "--output_dir", str(tmp_path / "ft"), "--max_train_examples", "64",
         "--max_eval_examples", "64", "--max_steps", "4", "--batch_size", "8", "--max_seq_length", "64",
         "--recipe", "none",
         "--no-progress_bar", "--no-tensorboard"],
        cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert finetuned.returncode == 0, explain(finetuned)
    results = json.loads((tmp_path / "ft" / "eval_results.json").read_text())
    assert 0.0 <= results["accuracy"] <= 1.0 and results["step"] == 4


def test_resume_on_another_world_size_refused_then_universal(mlm_zero2, corpus_shards, tmp_path):
    """2 ranks -> 1 rank: refused as it is; resumed through a DeepSpeed universal checkpoint."""
    shutil.copytree(mlm_zero2 / "checkpoints", tmp_path / "checkpoints")
    one_rank = train_args(corpus_shards, tmp_path, max_steps=32, global_batch_size=16)  # = 8 x 2 x 1 rank
    result = subprocess.run(deepspeed_command(one_rank, ranks=1), cwd=REPO, env=cpu_env(), capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 2, explain(result)
    assert "was written by 2 ranks and this run has 1" in result.stderr
    assert "deepspeed.checkpoint.ds_to_universal" in result.stderr and "--universal_checkpoint true" in result.stderr

    step = tmp_path / "checkpoints" / "step_00000030"
    subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(step),
                    "--output_folder", f"{step}_universal", "--inject_missing_state"], cwd=tmp_path, env=cpu_env(),
                   check=True, capture_output=True, timeout=120)
    result = subprocess.run(deepspeed_command([*one_rank, "--universal_checkpoint", "true"], ranks=1), cwd=REPO,
                            env=cpu_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, explain(result)
    assert "resumed from" in result.stdout and "step 30, 480 samples consumed" in result.stdout
    assert "micro 8 x accumulation 2 x 1 ranks" in result.stdout
    losses = step_losses(tmp_path)
    assert sorted(losses) == [31, 32]
    # the trained weights came back: far below the first steps' loss of the 2-rank run
    assert max(losses.values()) < step_losses(mlm_zero2)[1] - 0.2


def test_zero1_bf16_with_accumulation_trains(corpus_shards, tmp_path):
    result = run_deepspeed(train_args(corpus_shards, tmp_path, ds_config="ds_configs/zero1_bf16.json", max_steps=16,
                                      micro_batch_size=4, grad_accum=2, eval_interval=16))
    assert result.returncode == 0, explain(result)
    assert "bf16 | ZeRO 1" in result.stdout and "global batch 16 = micro 4 x accumulation 2 x 2 ranks" in result.stdout
    first, last = _evals(tmp_path)
    assert last["mlm_loss"] < first["mlm_loss"] - 0.1, (first, last)


def test_exact_resume_and_killed_save(corpus_shards, tmp_path):
    """20 straight steps == 10 steps, a save killed at step 15, resume from 10, 10 more."""
    flags = dict(max_steps=20, save_interval=5, eval_interval=1000, lr=1e-3)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = run_deepspeed(train_args(corpus_shards, straight, **flags))
    assert result.returncode == 0, explain(result)

    # Save killed (SIGKILL on rank 0) after its files are written, before the commit.
    killed = run_deepspeed(train_args(corpus_shards, resumed, **flags), PRETRAIN_KILL_IN_SAVE_AT_STEP="15")
    assert killed.returncode != 0, explain(killed)
    checkpoints = resumed / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step_00000010"
    assert (checkpoints / ".tmp-step_00000015").is_dir() and not (checkpoints / "step_00000015").exists()

    result = run_deepspeed(train_args(corpus_shards, resumed, **flags))
    assert result.returncode == 0, explain(result)
    assert "resumed from" in result.stdout and "step 10" in result.stdout
    assert not (checkpoints / ".tmp-step_00000015").exists()
    expected, got = step_losses(straight), step_losses(resumed)
    assert sorted(got) == list(range(1, 21))
    assert [got[s] for s in range(1, 21)] == [expected[s] for s in range(1, 21)]
    # dropout was on, so equality is not trivial: the losses vary from step to step
    assert len({round(v, 6) for v in expected.values()}) == 20


def _ranks(launcher: subprocess.Popen) -> list[psutil.Process]:
    """The rank processes: children of DeepSpeed's per-node launcher (not their loader workers)."""
    return [p for p in psutil.Process(launcher.pid).children(recursive=True)
            if "--local_rank" in " ".join(p.cmdline()) and "deepspeed.launcher.launch" in " ".join(p.parent().cmdline())]


def test_sigterm_saves_and_exits_zero(corpus_shards, tmp_path):
    launcher = subprocess.Popen(deepspeed_command(train_args(corpus_shards, tmp_path, max_steps=100_000,
                                                             log_interval=1)),
                                cwd=REPO, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        metrics = tmp_path / "metrics.jsonl"
        while time.time() < deadline and (not metrics.is_file() or len(read_jsonl(metrics)) < 3):
            assert launcher.poll() is None, launcher.stdout.read()
            time.sleep(0.5)
        ranks = _ranks(launcher)
        assert len(ranks) == 2
        for rank in ranks:  # as Slurm does on preemption: every task gets SIGTERM
            rank.send_signal(signal.SIGTERM)
        output, _ = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, output[-5000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "preempted"
    step = summary["step"]
    assert step >= 3 and (tmp_path / "checkpoints" / "latest").read_text().strip() == f"step_{step:08d}"
    assert (tmp_path / "checkpoints" / f"step_{step:08d}" / "checkpoint.json").is_file()


def test_nonfinite_loss_stops_before_the_update(corpus_shards, tmp_path):
    result = run_deepspeed(train_args(corpus_shards, tmp_path, max_steps=10, save_interval=2),
                           PRETRAIN_INJECT_NONFINITE_AT_STEP="5")
    assert result.returncode == 1, explain(result)
    assert "non-finite loss in step 5 (fp32)" in result.stdout and "stopped before the update" in result.stdout
    assert "Last checkpoint:" in result.stdout and "step_00000004" in result.stdout
    assert sorted(step_losses(tmp_path)) == [1, 2, 3, 4]
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "non-finite loss"
    assert not (tmp_path / "checkpoints" / "step_00000005").exists()


def test_an_objective_from_outside_the_package_trains_resumes_and_exports(corpus_shards, tmp_path):
    """--objective module:Class through the real launcher, trainer, checkpoint, resume and export."""
    plugin = dict(objective="plain_mlm_objective:PlainMaskedLM", label_smoothing=0.1, max_steps=10,
                  save_interval=5, eval_interval=10)
    env = {"PYTHONPATH": str(REPO / "tests" / "pretrain")}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = run_deepspeed(train_args(corpus_shards, straight, **plugin), **env)
    assert result.returncode == 0, explain(result)
    evals = read_jsonl(straight / "eval.jsonl")
    assert sorted(evals[-1]) == ["accuracy", "loss", "step"] and evals[-1]["loss"] < evals[0]["loss"]
    info = json.loads((straight / "checkpoints" / "step_00000010" / "checkpoint.json").read_text())
    assert info["trainer"]["model"]["objective"] == plugin["objective"]
    assert info["trainer"]["model"]["options"] == {"label_smoothing": 0.1}

    # The same run stopped after step 5 and started again: the same losses from step 6 on.
    first = run_deepspeed(train_args(corpus_shards, resumed, **plugin), PRETRAIN_INJECT_NONFINITE_AT_STEP="6", **env)
    assert first.returncode == 1, explain(first)
    result = run_deepspeed(train_args(corpus_shards, resumed, **plugin), **env)
    assert result.returncode == 0 and "resumed from" in result.stdout, explain(result)
    assert step_losses(resumed) == step_losses(straight)

    converted = subprocess.run([sys.executable, "-m", "pretrain.convert", str(straight / "checkpoints"), "--output",
                                str(tmp_path / "model")], cwd=REPO, env=cpu_env(**env), capture_output=True,
                               text=True, timeout=300)
    assert converted.returncode == 0, explain(converted)
    model = load_model(tmp_path / "model")
    assert model.head == "masked_lm" and model.config.emd_layers == 0


def test_an_objective_whose_engine_wraps_a_sub_module(corpus_shards, tmp_path):
    """An engine named after the sub-module it optimizes keeps its files in a checkpoint
    sub-folder; training, resume and conversion find them there."""
    flags = dict(objective="plain_mlm_objective:PlainMaskedLMOwnEngine", max_steps=6, save_interval=3,
                 eval_interval=6)
    env = {"PYTHONPATH": str(REPO / "tests" / "pretrain")}
    first = run_deepspeed(train_args(corpus_shards, tmp_path, **flags), PRETRAIN_INJECT_NONFINITE_AT_STEP="4", **env)
    assert first.returncode == 1, explain(first)
    assert (tmp_path / "checkpoints" / "step_00000003" / "model" / "mp_rank_00_model_states.pt").is_file()
    result = run_deepspeed(train_args(corpus_shards, tmp_path, **flags), **env)
    assert result.returncode == 0 and "resumed from" in result.stdout, explain(result)
    evals = read_jsonl(tmp_path / "eval.jsonl")
    assert evals[-1]["step"] == 6 and evals[-1]["loss"] < evals[0]["loss"]
    converted = subprocess.run([sys.executable, "-m", "pretrain.convert", str(tmp_path / "checkpoints"), "--output",
                                str(tmp_path / "model")], cwd=REPO, env=cpu_env(**env), capture_output=True,
                               text=True, timeout=300)
    assert converted.returncode == 0, explain(converted)
    assert load_model(tmp_path / "model").head == "masked_lm"


def test_decoupled_rtd_on_zero3_resumes_bit_identically_with_an_optimizer_each(corpus_shards, tmp_path):
    """The v3 default: generator and discriminator with their own engines (lr, clipping, state)."""
    flags = dict(ds_config="ds_configs/zero3.json", objective="rtd", discriminator_lr=5e-4, max_steps=8,
                 save_interval=4, eval_interval=8, log_interval=1)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = run_deepspeed(train_args(corpus_shards, straight, **flags))
    assert result.returncode == 0, explain(result)
    # Each model's gradient norm and learning rate are its own.
    assert "generator grad norm" in result.stdout and "discriminator grad norm" in result.stdout
    steps = read_jsonl(straight / "metrics.jsonl")
    assert all(s["discriminator_lr"] == pytest.approx(s["generator_lr"] / 4) for s in steps)  # 5e-4 vs 2e-3
    step_dir = straight / "checkpoints" / "step_00000008"
    assert (step_dir / "generator").is_dir() and (step_dir / "discriminator").is_dir()

    first = run_deepspeed(train_args(corpus_shards, resumed, **flags), PRETRAIN_INJECT_NONFINITE_AT_STEP="6")
    assert first.returncode == 1, explain(first)
    result = run_deepspeed(train_args(corpus_shards, resumed, **flags))
    assert result.returncode == 0 and "resumed from" in result.stdout, explain(result)
    expected, got = read_jsonl(straight / "metrics.jsonl"), {r["step"]: r for r in read_jsonl(resumed / "metrics.jsonl")}
    for record in expected:
        assert got[record["step"]] == record  # every figure of every step, bit for bit
    assert read_jsonl(resumed / "eval.jsonl")[-1] == read_jsonl(straight / "eval.jsonl")[-1]


def test_joint_rtd_with_one_optimizer(corpus_shards, tmp_path):
    result = run_deepspeed(train_args(corpus_shards, tmp_path, objective="rtd", decoupled_training="false",
                                      max_steps=6, micro_batch_size=4, grad_accum=2, eval_interval=6,
                                      save_interval=6))
    assert result.returncode == 0, explain(result)
    steps = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(steps) == 6 and "lr" in steps[0] and "generator_lr" not in steps[0]
    assert not (tmp_path / "checkpoints" / "step_00000006" / "generator").exists()
    evals = read_jsonl(tmp_path / "eval.jsonl")
    assert evals[-1]["loss"] < evals[0]["loss"]


def test_decoupled_rtd_in_bf16_on_zero1_with_accumulation(corpus_shards, tmp_path):
    result = run_deepspeed(train_args(corpus_shards, tmp_path, objective="rtd", ds_config="ds_configs/zero1_bf16.json",
                                      max_steps=4, micro_batch_size=4, grad_accum=2, eval_interval=4, save_interval=4,
                                      log_interval=1))
    assert result.returncode == 0, explain(result)
    assert "bf16 | ZeRO 1" in result.stdout and "discriminator grad norm" in result.stdout
    steps = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(steps) == 4 and all(math.isfinite(s["loss"]) for s in steps)
