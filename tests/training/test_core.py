"""The training core shared by pretrain and finetune: DeepSpeed config resolution, one
precedence for every source, the optimizer's parameter groups, the schedule, and the
one-collective step agreement."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deberta import HEADS, DebertaConfig, build_model
from pretrain.config import parse_args
from pretrain.objectives.rtd import ReplacedTokenDetection, RTDOptions
from training import sync
from training.config import EngineConfig, OptimizerConfig
from training.ds_config import ConfigError, resolve_batch, resolve_ds_config, resolve_precision
from training.optim import lr_factor, parameter_groups

REPO = Path(__file__).resolve().parents[2]


def _engine(**values):
    return EngineConfig(**values)


def test_batch_resolution():
    assert resolve_batch({"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1}, _engine(), 4) \
        == (32, 8, 1)
    assert resolve_batch({"train_micro_batch_size_per_gpu": 8}, _engine(global_batch_size=2048), 256) == (2048, 8, 1)
    assert resolve_batch({"train_micro_batch_size_per_gpu": 8}, _engine(global_batch_size=8192), 2) == (8192, 8, 512)
    assert resolve_batch({}, _engine(global_batch_size=64, grad_accum=2), 4) == (64, 8, 2)
    # Hugging Face style "auto" means unset; the command's default micro-batch fills in.
    assert resolve_batch({"train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto"}, _engine(), 2,
                         default_micro=32) == (64, 32, 1)
    assert resolve_batch({"train_micro_batch_size_per_gpu": 4}, _engine(), 2, default_micro=32) == (8, 4, 1)
    assert resolve_batch({"train_micro_batch_size_per_gpu": 4}, _engine(micro_batch_size=6), 2) == (12, 6, 1)
    with pytest.raises(ConfigError, match="do not multiply out"):
        resolve_batch({}, _engine(global_batch_size=64, micro_batch_size=8, grad_accum=2), 2)
    with pytest.raises(ConfigError, match="train_batch_size in the DeepSpeed config=48"):
        resolve_batch({"train_batch_size": 48, "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1},
                      _engine(), 4)
    with pytest.raises(ConfigError, match="not a multiple"):
        resolve_batch({"train_micro_batch_size_per_gpu": 8}, _engine(global_batch_size=100), 4)
    with pytest.raises(ConfigError, match="micro-batch size"):
        resolve_batch({}, _engine(global_batch_size=64), 4)


def test_precision_resolution_on_cpu():
    assert resolve_precision({}, _engine()) == "fp32"
    assert resolve_precision({"bf16": {"enabled": True}}, _engine()) == "bf16"
    assert resolve_precision({"bf16": {"enabled": "auto"}}, _engine()) == "fp32"
    assert resolve_precision({"bf16": {"enabled": True}}, _engine(precision="fp32")) == "fp32"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16 needs a GPU"):
            resolve_precision({"fp16": {"enabled": True}}, _engine())


@pytest.mark.parametrize("path", sorted((REPO / "ds_configs").glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_ds_config_resolves(path):
    ds = resolve_ds_config(_engine(ds_config=str(path), precision="fp32"), OptimizerConfig(), world=2,
                           default_micro=8)
    raw = json.loads(path.read_text())
    stage = raw.get("zero_optimization", {}).get("stage", 0)
    assert ds["zero_optimization"]["stage"] == stage and ds["train_batch_size"] == 2 * ds["train_micro_batch_size_per_gpu"]
    assert ds["gradient_clipping"] == 1.0 and not ds["fp16"]["enabled"] and not ds["bf16"]["enabled"]
    assert ("offload" in path.name) == ("offload_optimizer" in ds["zero_optimization"])
    assert raw.get("fp16", {}).get("enabled", False) == ("fp16" in path.name)
    assert raw.get("bf16", {}).get("enabled", False) == ("bf16" in path.name)


def test_ds_config_with_an_optimizer_section_is_refused(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "Adam"}}))
    with pytest.raises(ConfigError, match="remove the 'optimizer' section"):
        resolve_ds_config(_engine(ds_config=str(path)), OptimizerConfig(), world=1)


def test_one_precedence_flags_then_config_file_then_ds_json_then_defaults(tmp_path):
    ds_path = tmp_path / "ds.json"
    ds_path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "gradient_clipping": 0.5,
                                   "zero_optimization": {"stage": 1}}))
    config_file = tmp_path / "run.yaml"
    config_file.write_text(f"ds_config: {ds_path}\nmicro_batch_size: 6\nlr: 0.003\nwarmup_steps: 7\n")

    def resolved(*flags):
        config = parse_args(["--data_dir", "x", *flags])
        return config, resolve_ds_config(config.engine, config.optimizer, world=1)

    config, ds = resolved("--config", str(config_file))  # the file over the JSON and the defaults
    assert (ds["train_micro_batch_size_per_gpu"], config.optimizer.lr, config.optimizer.warmup_steps) == (6, 3e-3, 7)
    assert ds["gradient_clipping"] == 0.5 and ds["zero_optimization"]["stage"] == 1  # the JSON over the defaults
    assert config.optimizer.adam_beta2 == 0.98  # pretraining's own default
    config, ds = resolved("--micro_batch_size", "2", "--clip_grad", "2", "--zero_stage", "0", "--config",
                          str(config_file))  # flags win, wherever --config stands
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_clipping"], ds["zero_optimization"]["stage"]) == (2, 2, 0)
    assert config.optimizer.lr == 3e-3


def test_learning_rate_schedule():
    factors = [lr_factor(s, warmup=10, total_steps=110) for s in range(110)]
    assert factors[0] == pytest.approx(1 / 11) and factors[9] == pytest.approx(10 / 11)
    assert factors[10] == 1.0 and factors[60] == pytest.approx(0.5) and factors[109] == pytest.approx(0.01)
    assert all(a <= b for a, b in zip(factors[:10], factors[1:11]))
    assert OptimizerConfig(warmup_ratio=0.1).warmup(200) == 20 and OptimizerConfig(warmup_steps=5).warmup(200) == 5


def _tiny():
    return DebertaConfig.from_preset("deberta-v3-base", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=100, max_position_embeddings=32,
                                     position_buckets=8, emd_layers=1)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_parameter_groups_decay_matrices_only(head):
    """Biases and LayerNorm weights are never decayed; every matrix is."""
    model = build_model(_tiny(), head)
    decay, no_decay = parameter_groups(model.parameters(), 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith(("bias", "LayerNorm.weight")) for p in no_decay["params"])
    assert not any(names[id(p)].endswith(("bias", "LayerNorm.weight")) for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)


def test_the_gdes_delta_is_decayed_like_the_authors_code():
    objective = ReplacedTokenDetection(RTDOptions(), _tiny())
    delta = objective.discriminator.deberta.embeddings.word_embeddings.delta
    decay, _ = parameter_groups(objective.parameters(), 0.01)
    assert any(p is delta for p in decay["params"])


def test_a_step_crosses_the_ranks_in_one_collective(monkeypatch):
    calls = []
    monkeypatch.setattr(sync.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(sync.dist, "all_reduce", lambda tensor: calls.append(tensor.clone()) or tensor.mul_(2))
    totals = sync.StepTotals(torch.device("cpu"))
    for loss in (torch.tensor(1.5), torch.tensor(float("nan"))):
        totals.add_loss(loss)
        totals.add({"loss": loss, "count": 3, "histogram": torch.ones(4)})
    reduced = totals.reduce(stop_requested=True)
    assert len(calls) == 1 and calls[0].dtype == torch.float64  # metrics and both flags together
    assert float(reduced["count"]) == 12 and reduced["histogram"].tolist() == [4.0] * 4
    assert sync.stop_requested(reduced)
    with pytest.raises(sync.NonFiniteLoss, match="non-finite loss in step 7"):
        sync.check_finite(reduced, 7, "bf16", "")
    sync.check_finite(reduced, 7, "fp16", "")  # fp16: the loss scaler skips the step instead


def test_an_agreement_before_each_update_adds_up_and_stops_every_rank_on_a_nan(monkeypatch):
    monkeypatch.setattr(sync.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(sync.dist, "all_reduce", lambda tensor: tensor.mul_(2))  # as if two equal ranks
    agreement = sync.StepAgreement(torch.device("cpu"), step=3, precision="fp32", advice="Lower --lr.")
    agreement.record({"loss": torch.tensor(2.0), "generator_count": 5})
    agreement.agree()  # before the first optimizer's update
    agreement.record({"loss": torch.tensor(1.0), "discriminator_count": 7})
    agreement.agree()  # before the second's
    assert float(agreement.result["loss"]) == 6.0 and float(agreement.result["generator_count"]) == 10
    assert float(agreement.result["discriminator_count"]) == 14
    agreement.record({"loss": torch.tensor(float("inf"))})
    with pytest.raises(sync.NonFiniteLoss, match=r"step 3 \(fp32\).*Lower --lr"):
        agreement.agree()


def _one_layer_after_steps(bias_correction: bool, grads: list, lr=0.1, decay=0.5, betas=(0.9, 0.999), eps=1e-6):
    from training.optim import build_optimizer
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    start = [p.detach().clone() for p in (layer.weight, layer.bias)]
    config = OptimizerConfig(lr=lr, weight_decay=decay, adam_beta1=betas[0], adam_beta2=betas[1], adam_eps=eps,
                             adam_bias_correction=bias_correction)
    optimizer = build_optimizer(layer, config, offloaded=False, on_gpu=False)
    for weight_grad, bias_grad in grads:
        layer.weight.grad, layer.bias.grad = weight_grad.clone(), bias_grad.clone()
        optimizer.step()
    return start, [layer.weight.detach(), layer.bias.detach()], optimizer


def _by_hand(start, grads, bias_correction, decay, lr=0.1, betas=(0.9, 0.999), eps=1e-6):
    """Adam step by step in float64, one element at a time (decay only on the matrix)."""
    out = []
    for index, (p0, rate) in enumerate(zip(start, (decay, 0.0))):
        values = []
        for k, p in enumerate(p0.double().flatten().tolist()):
            m = v = 0.0
            for t, pair in enumerate(grads, start=1):
                g = float(pair[index].double().flatten()[k])
                m, v = betas[0] * m + (1 - betas[0]) * g, betas[1] * v + (1 - betas[1]) * g * g
                m_used, v_used = (m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)) if bias_correction else (m, v)
                p = p * (1 - lr * rate) - lr * m_used / (v_used ** 0.5 + eps)
            values.append(p)
        out.append(torch.tensor(values, dtype=torch.float64).reshape(p0.shape))
    return out


@pytest.mark.parametrize("bias_correction", [True, False])
def test_adam_bias_correction_setting_against_a_hand_computed_step(bias_correction):
    torch.manual_seed(1)
    grads = [(torch.randn(2, 3), torch.randn(2)) for _ in range(2)]
    start, after, optimizer = _one_layer_after_steps(bias_correction, grads)
    expected = _by_hand(start, grads, bias_correction, decay=0.5)
    for got, want in zip(after, expected):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    # The two settings differ, by the factor the correction makes: at t=1 the uncorrected step is
    # (1 - b1) / sqrt(1 - b2) = 0.1 / 0.0316 ~ 3.16 times the corrected one.
    other = _by_hand(start, grads[:1], not bias_correction, decay=0.5)
    first = _by_hand(start, grads[:1], bias_correction, decay=0.5)
    step_this, step_other = (first[1] - start[1].double()).abs(), (other[1] - start[1].double()).abs()
    ratio = (step_other / step_this) if bias_correction else (step_this / step_other)
    torch.testing.assert_close(ratio, torch.full_like(ratio, 0.1 / 0.001 ** 0.5), rtol=1e-3, atol=0)
    # Off: our AdamW (torch's cannot switch it off); on: torch's AdamW.
    assert type(optimizer).__module__ == ("torch.optim.adamw" if bias_correction else "training.optim")


def test_adam_bias_correction_reaches_deepspeed_cpu_adam_when_offloaded(monkeypatch):
    import deepspeed.ops.adam
    from training.optim import build_optimizer
    seen = {}
    monkeypatch.setattr(deepspeed.ops.adam, "DeepSpeedCPUAdam", lambda groups, **kwargs: seen.update(kwargs))
    for flag in (True, False):
        build_optimizer(torch.nn.Linear(2, 2), OptimizerConfig(adam_bias_correction=flag), offloaded=True, on_gpu=False)
        assert seen["bias_correction"] is flag and seen["adamw_mode"] is True


def test_adam_bias_correction_is_a_flag_and_recipes_turn_it_off():
    assert parse_args(["--data_dir", "x"]).optimizer.adam_bias_correction is True
    assert parse_args(["--data_dir", "x", "--no_adam_bias_correction"]).optimizer.adam_bias_correction is False
    assert parse_args(["--data_dir", "x", "--recipe", "deberta-v3-base-rtd-script"]).optimizer.adam_bias_correction \
        is False
