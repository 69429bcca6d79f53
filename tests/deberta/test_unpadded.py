"""Packed (unpadded) batches give the padded batch's logits and gradients, for every finetuning head."""
import pytest
import torch

from deberta.attention import Packing
from deberta.model import DebertaConfig, build_model

V3 = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
          max_position_embeddings=64, max_relative_positions=32, position_buckets=8, conv_kernel_size=3,
          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3)
# v1: absolute positions in the input, token types, separate position projections, no buckets
V1 = dict(model_type="deberta", vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
          intermediate_size=64, max_position_embeddings=64, max_relative_positions=32, position_biased_input=True,
          type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3)
CONFIGS = {"v3": V3, "v1": V1}
LENGTHS = [3, 29, 1, 12, 40]  # very different lengths, the longest not first


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices on a shared machine: one thread is faster than several."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def sequences(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = [torch.randint(5, 120, (n,), generator=generator) for n in lengths]
    types = [(torch.arange(n) >= n // 2).long() for n in lengths]  # a second segment in each
    return ids, types


def padded(values, fill=0):
    length = max(len(v) for v in values)
    return torch.stack([torch.cat([v, v.new_full((length - len(v),), fill)]) for v in values])


def packed_args(lengths):
    cu_seqlens = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    return dict(cu_seqlens=cu_seqlens, max_seqlen=max(lengths))


def padded_args(ids, types):
    mask = padded([torch.ones(len(v), dtype=torch.long) for v in ids])
    return dict(input_ids=padded(ids), attention_mask=mask, token_type_ids=padded(types))


def build(version, head):
    torch.manual_seed(0)
    return build_model(DebertaConfig(**CONFIGS[version]), head).eval()


def grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(first, second):
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=1e-5, rtol=1e-4, msg=name)


def test_packing_pads_and_unpads():
    packing = Packing(torch.tensor([0, 2, 5, 6], dtype=torch.int32), 3, 6)
    tokens = torch.arange(6.0)
    assert packing.positions.tolist() == [0, 1, 0, 1, 2, 0]
    assert packing.pad(tokens, fill=-1).tolist() == [[0, 1, -1], [2, 3, 4], [5, -1, -1]]
    assert packing.unpad(packing.pad(tokens)).tolist() == tokens.tolist()
    assert packing.mask.tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    spaced, rows = packing.spaced(tokens + 1, gap=2)
    assert spaced.tolist() == [1, 2, 0, 0, 3, 4, 5, 0, 0, 6, 0, 0] and rows.tolist() == [0, 1, 4, 5, 6, 9]


@pytest.mark.parametrize("kernel", [3, 5])
def test_ngie_convolution_packed_slides_within_each_sequence(kernel, monkeypatch):
    """The packed convolution runs along the spaced stream, never a padded batch: each output
    is the padded batch's, a sequence of one token and windows wider than a neighbour included."""
    from deberta.model import ConvLayer
    config = DebertaConfig(**{**V3, "conv_kernel_size": kernel})
    torch.manual_seed(0)
    conv = ConvLayer(config).eval()
    lengths = [3, 1, 7, 2]
    packing = Packing(torch.tensor([0] + lengths).cumsum(0).to(torch.int32), max(lengths), sum(lengths))
    layer_input, layer_output = torch.randn(sum(lengths), 32), torch.randn(sum(lengths), 32)
    padded_out = conv(packing.pad(layer_input), packing.pad(layer_output), packing.mask.long())
    monkeypatch.setattr(Packing, "pad", lambda *_: pytest.fail("the packed convolution padded its input"))
    torch.testing.assert_close(conv(layer_input, layer_output, packing), packing.unpad(padded_out),
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("version", ["v3", "v1"])
def test_sequence_classification(version):
    model = build(version, "sequence_classification")
    ids, types = sequences(LENGTHS)
    labels = torch.tensor([0, 2, 1, 1, 0])
    reference = model(**padded_args(ids, types), labels=labels)
    reference.loss.backward()
    reference_grads = grads(model)
    model.zero_grad()
    out = model(torch.cat(ids), token_type_ids=torch.cat(types), labels=labels, **packed_args(LENGTHS))
    out.loss.backward()
    torch.testing.assert_close(out.logits, reference.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.loss, reference.loss, atol=1e-6, rtol=1e-5)
    assert_same_grads(grads(model), reference_grads)


@pytest.mark.parametrize("version", ["v3", "v1"])
def test_token_classification(version):
    model = build(version, "token_classification")
    ids, types = sequences(LENGTHS, seed=1)
    labels = [torch.randint(0, 3, (n,)) for n in LENGTHS]
    labels[1][4] = -100  # a position without a label
    reference = model(**padded_args(ids, types), labels=padded(labels, fill=-100))
    reference.loss.backward()
    reference_grads = grads(model)
    model.zero_grad()
    out = model(torch.cat(ids), token_type_ids=torch.cat(types), labels=torch.cat(labels), **packed_args(LENGTHS))
    out.loss.backward()
    real = padded_args(ids, types)["attention_mask"].bool()
    torch.testing.assert_close(out.logits, reference.logits[real], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.loss, reference.loss, atol=1e-6, rtol=1e-5)
    assert_same_grads(grads(model), reference_grads)


@pytest.mark.parametrize("version", ["v3", "v1"])
def test_question_answering(version):
    """Logits equal; the packed loss equals the padded one with the padding taken out of
    each softmax (which the padded head, as the reference's, leaves in)."""
    model = build(version, "question_answering")
    ids, types = sequences(LENGTHS, seed=2)
    start, end = torch.tensor([1, 10, 0, 3, 39]), torch.tensor([2, 20, 0, 11, 39])
    inputs = padded_args(ids, types)
    reference = model(**inputs)
    out = model(torch.cat(ids), token_type_ids=torch.cat(types), start_positions=start, end_positions=end,
                **packed_args(LENGTHS))
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(out.logits, reference.logits[real], atol=1e-5, rtol=1e-4)
    masked = reference.logits.masked_fill(~real.unsqueeze(-1), float("-inf"))
    expected = (torch.nn.functional.cross_entropy(masked[..., 0], start)
                + torch.nn.functional.cross_entropy(masked[..., 1], end)) / 2
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=1e-5)
    out.loss.backward()
    packed_grads = grads(model)
    model.zero_grad()
    again = model(**inputs).logits.masked_fill(~real.unsqueeze(-1), float("-inf"))
    ((torch.nn.functional.cross_entropy(again[..., 0], start)
      + torch.nn.functional.cross_entropy(again[..., 1], end)) / 2).backward()
    assert_same_grads(packed_grads, grads(model))


@pytest.mark.parametrize("version", ["v3", "v1"])
def test_multiple_choice(version):
    model = build(version, "multiple_choice")
    choice_lengths = [[4, 17, 9], [30, 2, 11]]  # 2 examples x 3 choices
    flat_lengths = [n for example in choice_lengths for n in example]
    ids, types = sequences(flat_lengths, seed=3)
    labels = torch.tensor([1, 2])
    inputs = {k: v.view(2, 3, -1) for k, v in padded_args(ids, types).items()}
    reference = model(**inputs, labels=labels)
    reference.loss.backward()
    reference_grads = grads(model)
    model.zero_grad()
    out = model(torch.cat(ids), token_type_ids=torch.cat(types), labels=labels, num_choices=3,
                **packed_args(flat_lengths))
    out.loss.backward()
    assert out.logits.shape == (2, 3)
    torch.testing.assert_close(out.logits, reference.logits, atol=1e-5, rtol=1e-4)
    assert_same_grads(grads(model), reference_grads)


def test_v1_positions_restart_per_sequence():
    """Packing without restarting the absolute positions would change the logits: the
    test above would catch a packed path that numbered the tokens 0..T-1."""
    model = build("v1", "sequence_classification")
    lengths = LENGTHS[:4]  # 45 tokens: numbered on, they stay inside the 64-row table
    ids, types = sequences(lengths)
    args = packed_args(lengths)
    right = model(torch.cat(ids), token_type_ids=torch.cat(types), **args).logits
    running = torch.arange(sum(lengths))
    wrong = model(torch.cat(ids), token_type_ids=torch.cat(types), position_ids=running, **args).logits
    assert (right - wrong).abs().max() > 1e-3


def test_sdpa_backend_packed_matches_eager():
    torch.manual_seed(0)
    eager = build_model(DebertaConfig(**V3), "sequence_classification").eval()
    sdpa = build_model(DebertaConfig(**V3, attention_backend="sdpa"), "sequence_classification").eval()
    sdpa.load_state_dict(eager.state_dict())
    ids, types = sequences(LENGTHS)
    args = packed_args(LENGTHS)
    torch.testing.assert_close(sdpa(torch.cat(ids), **args).logits, eager(torch.cat(ids), **args).logits,
                               atol=1e-5, rtol=1e-4)


def test_bad_packed_inputs_are_refused():
    model = build("v3", "sequence_classification")
    ids, types = sequences(LENGTHS)
    with pytest.raises(ValueError, match="max_seqlen"):
        model(torch.cat(ids), cu_seqlens=packed_args(LENGTHS)["cu_seqlens"])
    with pytest.raises(ValueError, match="num_choices"):
        build("v3", "multiple_choice")(torch.cat(ids), **packed_args(LENGTHS))
