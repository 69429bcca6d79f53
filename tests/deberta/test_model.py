"""Config validation, preset sizes, the enhanced mask decoder, precision safety, checkpointing."""
import math

import pytest
import torch

from deberta import PRESETS, DebertaConfig, DebertaModel, build_model
from deberta.attention import ATTENTION_BACKENDS, eager_attention, sdpa_attention
from deberta.model import log_bucket_position, relative_position_index

TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, max_relative_positions=32, position_buckets=8)

# Backbone parameters in millions (token embeddings excluded), from MISSION.md's table.
PUBLISHED_BACKBONE_M = {
    "deberta-base": 100, "deberta-large": 350, "deberta-xlarge": 700, "deberta-v2-xlarge": 710,
    "deberta-v2-xxlarge": 1320, "deberta-v3-xsmall": 22, "deberta-v3-small": 44, "deberta-v3-base": 86,
    "deberta-v3-large": 304, "mdeberta-v3-base": 86,
}


def backbone_millions(config: DebertaConfig) -> float:
    with torch.device("meta"):  # shapes only, no memory
        model = DebertaModel(config)
    total = sum(p.numel() for name, p in model.named_parameters() if "word_embeddings" not in name)
    return total / 1e6


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_backbone_size_matches_the_published_table(name):
    base = name.removesuffix("-mnli").removesuffix("-generator")
    expected = PUBLISHED_BACKBONE_M[base]
    config = DebertaConfig.from_preset(name)
    if name.endswith("-generator"):
        discriminator = DebertaConfig.from_preset(base)
        assert config.hidden_size == discriminator.hidden_size
        assert config.num_hidden_layers * 2 == discriminator.num_hidden_layers
        expected = backbone_millions(discriminator) / 2  # half the layers: about half the size
    assert abs(backbone_millions(config) - expected) <= 0.05 * expected


def test_presets_vocabularies():
    assert DebertaConfig.from_preset("deberta-base").vocab_size == 50265
    assert DebertaConfig.from_preset("deberta-v3-base").vocab_size == 128100
    assert DebertaConfig.from_preset("mdeberta-v3-base").vocab_size == 251000
    assert DebertaConfig.from_preset("deberta-v3-large-mnli").num_labels == 3


@pytest.mark.parametrize("field,value,allowed", [
    ("model_type", "bert", "deberta-v2"),
    ("hidden_act", "softplus", "gelu"),
    ("pos_att_type", "c2p|p2p", "c2p"),
    ("norm_rel_ebd", "rms", "layer_norm"),
    ("hidden_dropout_prob", 1.5, "probability"),
    ("num_hidden_layers", 0, ">= 1"),
    ("conv_kernel_size", 4, "odd"),
    ("attention_backend", "flash9", "eager"),
    ("talking_head", True, "False"),
    ("num_attention_heads", 5, "divisor"),
])
def test_bad_config_names_field_and_allowed_values(field, value, allowed):
    with pytest.raises(ValueError, match=field) as error:
        DebertaConfig(**{**TINY, field: value})
    assert allowed in str(error.value)


def test_decoder_and_biased_input_exclude_each_other():
    with pytest.raises(ValueError, match="emd_layers"):
        DebertaConfig(**TINY, emd_layers=2, position_biased_input=True)


def test_rtd_loss_with_nothing_to_count_is_zero_not_nan():
    model = build_model(DebertaConfig(**TINY), "replaced_token_detection")
    ids = torch.randint(5, 120, (1, 8))
    loss = model(ids, labels=torch.full_like(ids, -100)).loss
    assert loss.item() == 0.0
    loss.backward()


def test_v1_refuses_v2_features():
    with pytest.raises(ValueError, match="share_att_key"):
        DebertaConfig(model_type="deberta", share_att_key=True)
    config = DebertaConfig(model_type="deberta")  # v1 defaults need no v2 switches turned off
    assert (config.position_buckets, config.share_att_key, config.norm_rel_ebd) == (-1, False, "none")


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="unknown preset"):
        DebertaConfig.from_preset("deberta-v9")
    with pytest.raises(ValueError, match="hidden_sise"):
        DebertaConfig.from_dict({"hidden_sise": 3})


def test_config_json_round_trip(tmp_path):
    config = DebertaConfig.from_preset("deberta-v3-small", hidden_dropout_prob=0.0)
    path = tmp_path / "c.json"
    import json
    path.write_text(json.dumps(config.to_dict()))
    assert DebertaConfig.from_json(path) == config
    assert DebertaConfig.from_json("deberta-v3-small") == DebertaConfig.from_preset("deberta-v3-small")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="c.json"):
        DebertaConfig.from_json(path)


def test_replace_derives_sizes_again():
    small = DebertaConfig.from_preset("deberta-v3-base").replace(hidden_size=64, num_attention_heads=4)
    assert (small.embedding_size, small.attention_head_size, small.emd_layers) == (64, 16, 2)
    narrow = DebertaConfig(**TINY, embedding_size=16).replace(num_hidden_layers=1)
    assert narrow.embedding_size == 16  # given, not derived: kept
    with pytest.raises(ValueError, match="hidden_sise"):
        small.replace(hidden_sise=3)


def test_log_buckets_are_exact_near_and_logarithmic_far():
    relative = torch.arange(-511, 512)
    buckets = log_bucket_position(relative, 256, 512)
    near = relative.abs() <= 128
    assert torch.equal(buckets[near], relative[near])
    assert buckets.max() <= 255 and buckets.min() >= -255
    assert torch.equal(buckets, -buckets.flip(0))  # antisymmetric: one index serves c2p and p2c
    index = relative_position_index(512, DebertaConfig())  # S = 256: r(i, j) = bucket(i - j) + 256
    assert index[5, 5] == 256 and index[5, 3] == 258 and index[3, 5] == 254
    assert index[511, 0] == 511 and index[0, 511] == 1  # distance 511 = max_position - 1: the last bucket
    assert index[300, 0] == 256 + buckets[relative == 300].item() and 128 < index[300, 0] - 256 < 255


def test_masked_lm_logits_only_at_targets_and_everywhere_without_labels():
    torch.manual_seed(0)
    model = build_model(DebertaConfig(**TINY, emd_layers=2), "masked_lm").eval()
    ids = torch.randint(5, 120, (2, 16))
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 9] = 7, 8
    with torch.no_grad():
        targeted = model(ids, labels=labels)
        everywhere = model(ids)
    assert targeted.logits.shape == (2, 120) and everywhere.logits.shape == (2, 16, 120)
    assert torch.allclose(targeted.logits, everywhere.logits[labels != -100], atol=1e-6)
    expected = torch.nn.functional.cross_entropy(everywhere.logits[labels != -100], labels[labels != -100])
    assert torch.allclose(targeted.loss, expected, atol=1e-6)


@pytest.mark.parametrize("backend", sorted(ATTENTION_BACKENDS))
def test_decoder_at_the_targets_only_equals_decoding_everything(backend):
    """Same loss and gradients as running the decoder over every position, with padding
    and different target counts per row (and none at all)."""
    config = DebertaConfig(**TINY, emd_layers=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                           attention_backend=backend)
    torch.manual_seed(0)
    model = build_model(config, "masked_lm").train()
    ids = torch.randint(5, 120, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, [2, 5, 6, 19]] = ids[0, [2, 5, 6, 19]]
    labels[1, 13] = 9
    results = []
    for subset in (True, False):
        model.zero_grad()
        if subset:
            out = model(ids, mask, labels=labels)
            logits, loss = out.logits, out.loss
        else:
            backbone = model.deberta(ids, mask)
            states = model.lm_predictions.decode(backbone, mask, model.deberta.encoder)[labels != -100]
            logits = model.lm_predictions.lm_head(states, model.deberta.embeddings.word_embeddings.weight)
            loss = torch.nn.functional.cross_entropy(logits, labels[labels != -100])
        loss.backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    (a_logits, a_grads), (b_logits, b_grads) = results
    assert a_logits.shape == (5, 120) and torch.allclose(a_logits, b_logits, atol=1e-5)
    for x, y in zip(a_grads, b_grads):
        assert torch.allclose(x, y, atol=1e-6)
    nothing = model(ids, mask, labels=torch.full_like(ids, -100))
    assert nothing.logits.shape == (0, 120) and nothing.loss.item() == 0.0


def test_enhanced_mask_decoder_uses_absolute_positions():
    torch.manual_seed(0)
    model = build_model(DebertaConfig(**TINY, emd_layers=2), "masked_lm").eval()
    ids = torch.randint(5, 120, (1, 16))
    with torch.no_grad():
        before = model(ids).logits
        model.deberta.embeddings.position_embeddings.weight.mul_(2)
        after = model(ids).logits
        backbone_after = model.deberta(ids).last_hidden_state
        model.deberta.embeddings.position_embeddings.weight.div_(2)
        backbone_before = model.deberta(ids).last_hidden_state
    assert not torch.allclose(before, after)  # the decoder sees positions...
    assert torch.equal(backbone_before, backbone_after)  # ...the encoder does not


def test_backends_agree_forward_and_backward():
    torch.manual_seed(0)
    config = DebertaConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids = torch.randint(5, 120, (2, 24))
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    results = []
    for backend in ATTENTION_BACKENDS:
        torch.manual_seed(1)
        model = build_model(DebertaConfig(**{**config.to_dict(), "attention_backend": backend}),
                            "sequence_classification")
        out = model(ids, mask, labels=torch.tensor([0, 1]))
        out.loss.backward()
        results.append((out.logits, [p.grad for p in model.parameters()]))
    (logits_a, grads_a), *others = results
    for logits_b, grads_b in others:
        assert torch.allclose(logits_a, logits_b, atol=1e-5)
        for a, b in zip(grads_a, grads_b):
            assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("backend", sorted(ATTENTION_BACKENDS))
def test_no_mask_is_the_same_as_a_mask_of_ones(backend):
    torch.manual_seed(0)
    model = build_model(DebertaConfig(**TINY, conv_kernel_size=3, emd_layers=2, attention_backend=backend),
                        "masked_lm").eval()
    ids = torch.randint(5, 120, (2, 24))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, model(ids, torch.ones_like(ids)).logits, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients():
    config = DebertaConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, emd_layers=2)
    ids = torch.randint(5, 120, (2, 16))
    labels = ids.masked_fill(torch.rand(ids.shape) > 0.3, -100)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(3)
        model = build_model(config, "masked_lm").train()
        model.gradient_checkpointing_enable(checkpointing)
        model(ids, labels=labels).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def attention_inputs(dtype, magnitude=None, length=512, heads=2, dim=64, span=256):
    """Random inputs of length 512. With ``magnitude`` every entry is +-magnitude and the
    relative tables copy the queries/keys, so the products are as large as they can get."""
    generator = torch.Generator().manual_seed(0)
    if magnitude is None:
        query, key = (torch.randn(1, heads, length, dim, generator=generator) for _ in range(2))
    else:
        query, key = (magnitude * (torch.randint(0, 2, (1, heads, length, dim), generator=generator) * 2 - 1.0)
                      for _ in range(2))
    value = torch.randn(1, heads, length, dim, generator=generator)
    pos_key, pos_query = query[0, :, :2 * span].clone(), key[0, :, :2 * span].clone()
    index = relative_position_index(length, DebertaConfig(position_buckets=span, max_relative_positions=512))
    mask = torch.ones(1, length, dtype=torch.long)
    mask[0, 400:] = 0
    tensors = [t.to(dtype) for t in (query, key, value, pos_key, pos_query)]
    return tensors, index, mask


SCALE = 1 / math.sqrt(64 * 3)  # head size 64, c2p and p2c


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", [eager_attention, sdpa_attention])
def test_attention_does_not_overflow_in_half_precision(dtype, backend):
    # |q . pos_key| = 64 * 40 * 40 = 102400 > 65504: a product taken before scaling
    # overflows fp16, as in the reference v2 code; scaled first it stays near 7400.
    tensors, index, mask = attention_inputs(dtype, magnitude=40)
    query, pos_key = tensors[0], tensors[3]
    if dtype == torch.float16:
        assert torch.isinf(torch.matmul(query[:, :, :8], pos_key.transpose(-1, -2)[None])).any()
    result = backend(*tensors, index, mask, SCALE)
    assert torch.isfinite(result).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", [eager_attention, sdpa_attention])
def test_attention_in_half_precision_is_close_to_fp32(dtype, backend):
    tensors, index, mask = attention_inputs(dtype)
    reference = eager_attention(*[t.float() for t in tensors], index, mask, SCALE)
    result = backend(*tensors, index, mask, SCALE)
    real = mask[0].bool()
    assert (result.float() - reference)[:, :, real].abs().max() < (0.01 if dtype == torch.float16 else 0.05)


def test_bf16_model_on_512_tokens_is_finite_and_close_to_fp32():
    torch.manual_seed(0)
    config = DebertaConfig(**{**TINY, "max_position_embeddings": 512, "max_relative_positions": 512,
                              "position_buckets": 256})
    model = build_model(config, "masked_lm").eval()
    ids = torch.randint(5, 120, (1, 512))
    with torch.no_grad():
        full = model(ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(ids).logits
    assert torch.isfinite(half).all()
    assert (half.float() - full).abs().max() < 0.1


@pytest.mark.parametrize("changes, length, rows", [
    (dict(model_type="deberta", position_buckets=-1, max_relative_positions=-1), 9, 17),  # v1: S = 64
    (dict(), 3, 5),             # 8 buckets, S = 8: distances 0..2 stay exact
    (dict(), 40, 16),           # every bucket reachable: the whole table, unshifted
    # 16 buckets: distance 11 goes to 8 + ceil(ln(11/8) / ln(31/8) * 7) = 10, so 2 x 10 + 1 rows
    (dict(position_buckets=16), 12, 21),
])
def test_only_the_reachable_relative_rows_are_used_with_the_same_outputs(changes, length, rows):
    """A short sequence projects and multiplies against the 2m + 1 relative rows its
    distances reach (m = bucket(L - 1)), and its outputs and gradients equal those of the
    whole 2S-row table, whose index is the unshifted one."""
    torch.manual_seed(0)
    config = DebertaConfig(**{**TINY, **changes, "max_position_embeddings": 64})
    model = DebertaModel(config).eval()  # dropout off: the pos dropout draws per row
    encoder = model.encoder
    embeddings, index = encoder.relative_inputs(length, "cpu")
    assert embeddings.shape[0] == rows
    assert int(index.min()) == 0 and int(index.max()) == rows - 1 and int(index[0, 0]) == rows // 2
    # The same memory each call, so that the fused kernel's layout derived from it is kept too.
    assert encoder.relative_inputs(length, "cpu")[1].data_ptr() == index.data_ptr()
    ids = torch.randint(5, 120, (2, length))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, length // 2:] = 0
    windowed = model(ids, mask).last_hidden_state
    windowed.square().sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    encoder.reach = [config.relative_span] * len(encoder.reach)  # as if every row were reachable
    whole = model(ids, mask).last_hidden_state
    whole.square().sum().backward()
    torch.testing.assert_close(windowed, whole, rtol=0, atol=1e-6)
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-6, msg=name)
