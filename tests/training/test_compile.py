"""--compile: the encoder layers become one graph each without a break, one graph serves
every layer, and compiled training gives the losses of eager training (ZeRO-3 included)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

from deberta import DebertaConfig, DebertaForMaskedLM
from training.compile import compile_encoder_layers
from training.config import EngineConfig

REPO = Path(__file__).resolve().parents[2]
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab_size=1001,
            max_position_embeddings=64, position_buckets=32)
TINY_FLAG = ",".join(f"{k}={v}" for k, v in TINY.items())


def tiny_batch(seed: int = 0, length: int = 24):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1001, (3, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, length - 6:] = 0
    labels = torch.where((torch.rand(ids.shape, generator=g) < 0.2) & mask.bool(), ids, -100)
    return ids, mask, labels


def test_an_encoder_layer_is_one_graph_in_training():
    """No graph break inside a layer in training mode (dropout on), for the encoder's own
    pass and for the enhanced mask decoder's pass at chosen query positions."""
    model = DebertaForMaskedLM(DebertaConfig(**TINY, emd_layers=2)).train()
    encoder = model.deberta.encoder
    states, mask = torch.randn(2, 16, 64), torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0
    rel_embeddings, rel_index = encoder.relative_inputs(16, states.device)
    query_positions = torch.tensor([[1, 4, 7], [2, 3, 0]])
    query = torch.randn(2, 3, 64)
    for arguments in ((states, mask, rel_embeddings, rel_index),
                      (states, mask, rel_embeddings, rel_index, query, query_positions)):
        explanation = torch._dynamo.explain(encoder.layer[0].forward)(*arguments)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1


def test_compiled_layers_share_one_graph_and_give_the_eager_numbers():
    """Two layers and the decoder's two passes: two graphs in all (one per signature), none
    built again in later steps (fixed MLM output shape), and the numbers of eager mode."""
    torch.manual_seed(0)
    config = DebertaConfig(**TINY, emd_layers=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    eager = DebertaForMaskedLM(config).train()
    compiled = DebertaForMaskedLM(config).train()
    compiled.load_state_dict(eager.state_dict())
    counter = CompileCounterWithBackend("eager")
    assert compile_encoder_layers(compiled, backend=counter) == 2
    assert set(compiled.state_dict()) == set(eager.state_dict())  # names unchanged: checkpoints still load
    for seed in range(3):  # a new mask every step, the same number of outputs
        ids, mask, labels = tiny_batch(seed)
        expected = eager(ids, mask, labels=labels, max_predictions=6)
        got = compiled(ids, mask, labels=labels, max_predictions=6)
        torch.testing.assert_close(got.loss, expected.loss, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)
        got.loss.backward()
        expected.loss.backward()
    assert counter.frame_count == 2
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_compile_settings_are_checked():
    with pytest.raises(ValueError, match="compile_mode"):
        EngineConfig(compile=True, compile_mode="fastest")
    with pytest.raises(ValueError, match="compile_backend='nope'"):
        compile_encoder_layers(DebertaForMaskedLM(DebertaConfig(**TINY)), backend="nope")


# --- training runs (slow): compiled against eager, in one process ------------------------
@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    corpus = REPO.parent / "shared" / "data" / "corpus" / "inaugural.txt"
    if not corpus.is_file():
        pytest.skip(f"shared corpus not found at {corpus}")
    output = tmp_path_factory.mktemp("compile_data") / "data"
    result = subprocess.run([sys.executable, "-m", "data_prep", "shard", "--input", str(corpus), "--tokenizer",
                             str(REPO / "tests" / "assets" / "spm.model"), "--output", str(output), "--seq_len", "64",
                             "--valid_fraction", "0.05"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def pretrain_losses(data: Path, output: Path, **flags) -> list[float]:
    """The per-step losses of a short in-process pretraining run (a world of one)."""
    from pretrain.config import parse_args
    from pretrain.trainer import Trainer
    from training.distributed import shutdown

    values = {"model_config": "deberta-v3-base", "set_model": TINY_FLAG, "objective": "mlm", "data_dir": data,
              "output_dir": output, "max_steps": 6, "micro_batch_size": 4, "lr": 2e-3, "warmup_steps": 2,
              "log_interval": 100, "eval_interval": 1000, "save_interval": 1000, "eval_samples": 8,
              "num_workers": 0, "tensorboard": "false", **flags}
    argv = [item for name, value in values.items() for item in (f"--{name}", str(value))]
    try:
        assert Trainer(parse_args(argv)).train() == 0
    finally:
        shutdown()
    lines = (output / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.mark.slow
def test_compiled_pretraining_on_zero3_matches_eager(shards, tmp_path, monkeypatch):
    """MLM with the enhanced mask decoder and dropout, ZeRO-3 partitioning every parameter:
    compiled layers (aot_eager: the graphs PyTorch would hand to a code generator) train
    with the losses of eager mode, and ZeRO-3's gathers still happen around them."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    ds = json.loads((REPO / "ds_configs" / "zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition even tiny tensors
    (tmp_path / "zero3.json").write_text(json.dumps(ds))
    common = dict(data=shards, ds_config=tmp_path / "zero3.json")
    eager = pretrain_losses(output=tmp_path / "eager", **common)
    compiled = pretrain_losses(output=tmp_path / "compiled", compile="true", compile_backend="aot_eager", **common)
    assert len(eager) == 6 and eager[0] != eager[-1]
    assert compiled == pytest.approx(eager, rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_inductor_compiled_step_matches_eager():
    """The generated kernels (inductor, C++ on CPU): loss and gradients of eager mode within
    float32 tolerance (inductor fuses and reorders, so not bit for bit)."""
    torch.manual_seed(0)
    config = DebertaConfig(**TINY, emd_layers=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    eager = DebertaForMaskedLM(config).train()
    compiled = DebertaForMaskedLM(config).train()
    compiled.load_state_dict(eager.state_dict())
    compile_encoder_layers(compiled, backend="inductor")
    ids, mask, labels = tiny_batch(1)
    expected = eager(ids, mask, labels=labels, max_predictions=6)
    got = compiled(ids, mask, labels=labels, max_predictions=6)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-4, atol=1e-5)
    expected.loss.backward()
    got.loss.backward()
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_zero3_makes_each_compiled_layer_one_leaf_and_leaves_the_decoder_layer_eager():
    """ZeRO-3 gathers a compiled layer's weights in one hook outside its graph (a leaf
    module); the layer the enhanced mask decoder calls again is not compiled (DeepSpeed
    would reduce a leaf's gradients once per call)."""
    model = DebertaForMaskedLM(DebertaConfig(**{**TINY, "num_hidden_layers": 3}, emd_layers=2))
    assert compile_encoder_layers(model, backend="eager", zero3=True) == 2
    layers = model.deberta.encoder.layer
    assert [getattr(layer, "_z3_leaf", False) for layer in layers] == [True, True, False]
    assert [getattr(layer, "compiled", False) for layer in layers] == [True, True, False]
