"""The fused Triton backend against the eager reference, on CPU in Triton's interpreter.

The kernels are built for the interpreter (TRITON_INTERPRET=1) by the module fixture and
put back as they were afterwards, so no other test module runs them interpreted.
Skipped where Triton is not installed."""
import importlib
import logging
import math
import os
import sys

import pytest
import torch

pytest.importorskip("triton")

from deberta import DebertaConfig, build_model  # noqa: E402
from deberta import kernels as backend_module  # noqa: E402
from deberta.attention import Packing, eager_attention, relative_terms, sdpa_attention  # noqa: E402
from deberta.model import relative_position_index  # noqa: E402

KERNELS = "deberta.kernels.disentangled_attention"


# ---------------------------------------------------------------------------------------
# On a CUDA GPU (bench/gpu_check.sh runs these): the compiled kernels. They come first, so
# that on a GPU machine they run before the module fixture below swaps in the interpreter.
# ---------------------------------------------------------------------------------------
@pytest.fixture
def compiled_kernels():
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("TRITON_INTERPRET is set: the kernels are interpreted in this process")
    module = importlib.import_module(KERNELS)
    if module.INTERPRETED:
        module = importlib.reload(module)
    assert not module.INTERPRETED
    return module


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol,length,query_subset", [
    (torch.bfloat16, 3e-2, 512, False), (torch.bfloat16, 3e-2, 2048, False), (torch.bfloat16, 3e-2, 512, True),
    (torch.float16, 4e-3, 512, False), (torch.float32, 1e-4, 512, False)])
def test_cuda_kernels_match_eager(compiled_kernels, dtype, atol, length, query_subset):
    """Output and the five gradients against eager in fp32, at v3-base's head size and
    buckets, with padding; the decoder's query subset too."""
    inputs = make_inputs(batch=2, heads=3, length=length, head_dim=64, buckets=256, max_relative=512)
    if query_subset:
        positions = torch.stack([torch.randperm(length)[:77].sort().values for _ in range(2)])
        inputs["query"] = inputs["query"][:, :, :77].detach().requires_grad_()
        inputs["rel_index"], inputs["query_mask"] = inputs["rel_index"][positions], None
    reference = forward_backward(eager_attention, {n: v.cuda() if torch.is_tensor(v) else v
                                                   for n, v in _leaves_copy(inputs, torch.float32).items()})
    fused = forward_backward(backend_module.triton_attention,
                             {n: v.cuda() if torch.is_tensor(v) else v for n, v in _leaves_copy(inputs, dtype).items()})
    assert_close(fused, reference, atol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol", [(torch.bfloat16, 3e-2), (torch.float32, 1e-4)])
def test_cuda_varlen_kernels_match_eager(compiled_kernels, dtype, atol):
    """Packed sequences of v3-base's head size and buckets, one over 512 tokens and one
    shorter than a tile: output and gradients against eager on the padded batch in fp32."""
    inputs = make_packed_inputs(lengths=[300, 37, 517, 128], heads=3, head_dim=64, buckets=256, max_relative=512)
    reference = forward_backward(eager_attention, packed_copy(inputs, torch.float32, "cuda"))
    assert_close(forward_backward(backend_module.triton_attention, packed_copy(inputs, dtype, "cuda")), reference,
                 atol)


def packed_copy(inputs, dtype, device):
    """Packed inputs as new leaves of ``dtype`` on ``device``, their Packing moved along."""
    copy = {}
    for name, value in inputs.items():
        if name == "mask":
            value = Packing(value.cu_seqlens.to(device), value.max_seqlen, int(value.cu_seqlens[-1]))
        elif torch.is_tensor(value) and value.is_floating_point():
            value = value.detach().to(device, dtype).requires_grad_()
        elif torch.is_tensor(value):
            value = value.to(device)
        copy[name] = value
    return copy


@pytest.mark.gpu
def test_cuda_dropout_keep_rate(compiled_kernels):
    kept = compiled_kernels.dropout_keep_mask(11, (4, 12, 512, 512), 0.1, "cuda").float()
    assert abs(kept.mean().item() - 0.9) < 5 * math.sqrt(0.09 / kept.numel())


@pytest.mark.slow
def test_varlen_kernels_compile_for_hopper_without_a_gpu(compiled_kernels):
    """Triton's own compiler and ptxas build the three kernels for sm_90 with packed inputs
    (bf16, head size 64, both relative terms, dropout), within the H100's shared memory:
    what the interpreter cannot show (it runs constructs that a GPU build may refuse)."""
    from bench.kernel_resources import KERNELS, Build, compile_kernel, current_tiles

    for kernel in KERNELS:  # built as bench.kernel_resources builds them for its report
        built = compile_kernel(Build(arch=90, head_dim=64, layout="varlen", kernel=kernel, tiles=current_tiles(64)))
        assert built.asm["cubin"] and built.metadata.shared <= 227 * 1024, kernel


def _leaves_copy(inputs, dtype):
    return {name: value.detach().to(dtype).requires_grad_() if torch.is_tensor(value) and value.is_floating_point()
            else value for name, value in inputs.items()}


# ---------------------------------------------------------------------------------------
# On CPU, in Triton's interpreter
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kernels():
    """The kernel module decorated under TRITON_INTERPRET=1 (Triton decides interpreted or
    compiled when it decorates), then restored."""
    previous_env, previous_module = os.environ.get("TRITON_INTERPRET"), sys.modules.get(KERNELS)
    os.environ["TRITON_INTERPRET"] = "1"
    module = importlib.reload(previous_module) if previous_module else importlib.import_module(KERNELS)
    assert module.INTERPRETED
    yield module
    if previous_env is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = previous_env
    if previous_module is None:
        del sys.modules[KERNELS]
    else:
        importlib.reload(previous_module)


def make_inputs(batch=2, heads=1, length=45, head_dim=16, buckets=8, max_relative=32, c2p=True, p2c=True,
                padded=True, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    config = DebertaConfig(position_buckets=buckets, max_relative_positions=max_relative)
    span = config.relative_span

    def leaf(*shape):
        return torch.randn(*shape, generator=generator).to(dtype).requires_grad_()

    query, key, value = (leaf(batch, heads, length, head_dim) for _ in range(3))
    pos_key = leaf(heads, 2 * span, head_dim) if c2p else None
    pos_query = leaf(heads, 2 * span, head_dim) if p2c else None
    mask = None
    if padded:
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[-1, length - 7:] = 0
    scale = 1 / math.sqrt(head_dim * (1 + c2p + p2c))
    return dict(query=query, key=key, value=value, pos_key=pos_key, pos_query=pos_query,
                rel_index=relative_position_index(length, config), mask=mask, scale=scale, query_mask=mask)


def forward_backward(backend, inputs, **extra):
    leaves = [inputs[name] for name in ("query", "key", "value", "pos_key", "pos_query") if inputs[name] is not None]
    out = backend(**inputs, **extra)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    return out, torch.autograd.grad(out, leaves, grad_out)


def assert_close(result, reference, atol):
    (out, grads), (expected_out, expected_grads) = result, reference
    assert (out.float() - expected_out.float()).abs().max() <= atol
    names = iter(["query", "key", "value", "pos_key/pos_query", "pos_query"])
    for grad, expected in zip(grads, expected_grads):
        error = (grad.float() - expected.float()).abs().max().item()
        assert error <= atol * max(1.0, expected.abs().max().item()), (next(names), error)


def kernels_backend(kernels):
    assert kernels.INTERPRETED
    return backend_module.triton_attention


@pytest.fixture(autouse=True)
def fused_only(request, monkeypatch):
    """Comparisons must run the kernels, never the sdpa fallback (except where tested)."""
    if "falls_back" in request.node.name:
        return

    def refuse(reason, *args, **kwargs):
        raise AssertionError(f"fell back to sdpa: {reason}")

    monkeypatch.setattr(backend_module, "_fall_back", refuse)


def test_matches_eager_with_buckets_and_padding(kernels):
    """Forward and the gradients of q, k, v, pos_key and pos_query: several query and key
    blocks, log buckets and a clamped span (distances beyond 32 share the last rows),
    a padded sequence."""
    inputs = make_inputs(length=45, buckets=8, max_relative=32)
    assert_close(forward_backward(kernels_backend(kernels), inputs), forward_backward(eager_attention, inputs), 2e-5)




@pytest.mark.slow
@pytest.mark.parametrize("c2p,p2c", [(True, False), (False, True), (False, False)])
def test_each_term_switched_off(kernels, c2p, p2c):
    inputs = make_inputs(batch=1, heads=2, length=37, c2p=c2p, p2c=p2c, padded=False)
    assert_close(forward_backward(kernels_backend(kernels), inputs), forward_backward(eager_attention, inputs), 2e-5)


@pytest.mark.slow
def test_unbucketed_span_and_every_query_padded_row(kernels):
    """v1-style index (no buckets, span 16 < length: clamped at both ends), and a sequence
    whose second half is padding: its padded query rows are uniform over all keys."""
    inputs = make_inputs(batch=2, heads=1, length=40, buckets=-1, max_relative=16)
    inputs["mask"][0, 20:] = 0
    assert_close(forward_backward(kernels_backend(kernels), inputs), forward_backward(eager_attention, inputs), 2e-5)


def test_query_subset_of_the_decoder(kernels):
    """Lq < L: the enhanced mask decoder's queries at different masked positions per row
    ([B, Lq, L] index); the positions of row 0 span more than one window of distances."""
    inputs = make_inputs(batch=2, heads=1, length=70)
    positions = torch.tensor([[1, 6, 30, 31, 66, 69, 2], [5, 9, 11, 40, 12, 0, 3]])
    inputs["query"] = inputs["query"][:, :, :7].detach().requires_grad_()
    inputs["rel_index"] = inputs["rel_index"][positions]
    inputs["query_mask"] = None
    assert_close(forward_backward(kernels_backend(kernels), inputs), forward_backward(eager_attention, inputs), 2e-5)


def reference_with_dropout(inputs, kept, dropout_p):
    """eager_attention's arithmetic with a given keep mask instead of a random one."""
    query = inputs["query"] * inputs["scale"]
    scores = query @ inputs["key"].transpose(-1, -2)
    for term in relative_terms(query, inputs["key"], inputs["pos_key"], inputs["pos_query"], inputs["rel_index"],
                               inputs["scale"]):
        scores = scores + term
    allowed = inputs["mask"].bool()[:, None, None, :] & inputs["query_mask"].bool()[:, None, :, None]
    probs = torch.softmax(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min), -1)
    return (probs * kept / (1 - dropout_p)) @ inputs["value"]


def test_dropout_uses_one_mask_in_forward_and_backward(kernels):
    """With the keep mask the kernels draw (materialised by the debug kernel for the same
    seed), the eager arithmetic gives the same output and gradients: backward regenerated
    exactly the mask that forward used."""
    inputs = make_inputs(batch=1, heads=2, length=40)
    dropout_p = 0.3
    torch.manual_seed(5)
    seed = kernels.draw_dropout_seed()
    kept = kernels.dropout_keep_mask(seed, (1, 2, 40, 40), dropout_p, "cpu")
    torch.manual_seed(5)  # the backend draws the same seed
    result = forward_backward(kernels_backend(kernels), inputs, dropout_p=dropout_p)
    assert 0.6 < kept.float().mean() < 0.8  # so the agreement below means dropout acted
    assert_close(result, forward_backward(lambda **a: reference_with_dropout(a, kept, dropout_p), inputs), 2e-5)


def test_dropout_keep_rate_and_independent_streams(kernels):
    dropout_p = 0.1
    kept = kernels.dropout_keep_mask(123, (2, 2, 64, 64), dropout_p, "cpu").float()
    count = kept.numel()
    # Binomial: the keep rate is within 5 standard deviations of 1 - p.
    assert abs(kept.mean().item() - (1 - dropout_p)) < 5 * math.sqrt(dropout_p * (1 - dropout_p) / count)
    streams = kept.flatten(0, 1)
    assert all(not torch.equal(streams[0], other) for other in streams[1:])  # each (batch, head) its own
    assert not torch.equal(kept, kernels.dropout_keep_mask(124, (2, 2, 64, 64), dropout_p, "cpu").float())


@pytest.mark.slow
@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_head_sizes(kernels, head_dim):
    inputs = make_inputs(batch=1, heads=1, length=50, head_dim=head_dim)
    assert_close(forward_backward(kernels_backend(kernels), inputs), forward_backward(eager_attention, inputs), 2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("dtype,atol", [(torch.float16, 5e-3), (torch.bfloat16, 4e-2)])
def test_half_precision_close_to_fp32_reference(kernels, dtype, atol):
    half = make_inputs(batch=1, heads=2, length=40, head_dim=32, dtype=dtype)
    full = {name: value.detach().float().requires_grad_() if torch.is_tensor(value) and value.is_floating_point()
            else value for name, value in half.items()}
    result = forward_backward(kernels_backend(kernels), half)
    assert result[0].dtype == dtype
    assert_close(result, forward_backward(eager_attention, full), atol)


@pytest.mark.slow
def test_fp16_stays_finite_where_unscaled_products_overflow(kernels):
    """Entries of +-40 with tables that copy the queries and keys: q . pos_key reaches
    64 * 40 * 40 = 102400 > 65504, which overflows an fp16 product taken before scaling."""
    generator = torch.Generator().manual_seed(0)
    length, span = 48, 16

    def signs():
        return 40 * (torch.randint(0, 2, (1, 1, length, 64), generator=generator) * 2 - 1.0)

    query, key, value = signs(), signs(), torch.randn(1, 1, length, 64, generator=generator)
    index = relative_position_index(length, DebertaConfig(position_buckets=span, max_relative_positions=64))
    tensors = [t.half() for t in (query, key, value, query[0, :, :2 * span], key[0, :, :2 * span])]
    assert torch.isinf(tensors[0][0, 0] @ tensors[3][0].T).any()
    scale = 1 / math.sqrt(64 * 3)
    out = backend_module.triton_attention(*tensors, index, None, scale)
    reference = eager_attention(*[t.float() for t in tensors], index, None, scale)
    assert torch.isfinite(out).all() and (out.float() - reference).abs().max() < 0.05


def test_falls_back_to_sdpa_with_one_logged_line(kernels, monkeypatch, caplog):
    inputs = make_inputs(batch=1, heads=1, length=20, padded=False)
    monkeypatch.setattr(kernels, "INTERPRETED", False)  # as if the kernels were compiled for CUDA
    monkeypatch.setattr(backend_module, "_logged_reasons", set())
    with caplog.at_level(logging.WARNING, logger="deberta.kernels"):
        first = backend_module.triton_attention(**inputs)
        backend_module.triton_attention(**inputs)
    assert torch.equal(first, sdpa_attention(**inputs))
    lines = [r.getMessage() for r in caplog.records if r.name == "deberta.kernels"]
    assert len(lines) == 1 and "runs 'sdpa' instead: CPU tensors" in lines[0]


def test_falls_back_when_the_index_is_not_a_function_of_distance(kernels, caplog):
    inputs = make_inputs(batch=1, heads=1, length=20, padded=False)
    inputs["rel_index"] = inputs["rel_index"].clone()
    inputs["rel_index"][3, 5] += 1  # one pair off the distance's row
    with caplog.at_level(logging.WARNING, logger="deberta.kernels"):
        out = backend_module.triton_attention(**inputs)
    assert torch.equal(out, sdpa_attention(**inputs))
    assert kernels.relative_layout(inputs["rel_index"], 20, 8).reason.startswith("rel_index is not a function")


TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, max_relative_positions=32, position_buckets=8, emd_layers=2,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.mark.slow
@pytest.mark.parametrize("share_att_key", [True, False])
def test_model_loss_and_gradients_match_eager(kernels, share_att_key):
    """A tiny v3-style masked LM (buckets, padding, the enhanced mask decoder at the targets
    only, so Lq < L there) gives the same loss and parameter gradients with the fused kernels."""
    ids = torch.randint(5, 100, (2, 26), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 21:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, [3, 17, 25]] = ids[0, [3, 17, 25]]
    labels[1, [0, 20]] = ids[1, [0, 20]]
    results = []
    for backend in ("eager", "triton"):
        torch.manual_seed(0)
        model = build_model(DebertaConfig(**TINY, share_att_key=share_att_key, attention_backend=backend),
                            "masked_lm").train()
        loss = model(ids, mask, labels=labels).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (loss_eager, grads_eager), (loss_fused, grads_fused) = results
    assert abs(loss_eager.item() - loss_fused.item()) < 1e-5
    assert grads_eager.keys() == grads_fused.keys()
    for name, grad in grads_eager.items():
        assert torch.allclose(grads_fused[name], grad, atol=2e-5, rtol=1e-4), name


def test_relative_layout_is_derived_once_per_index_table(kernels):
    """The encoder's index (a view of one table buffer) is checked once, not at every layer
    and step; a query subset gets its positions; an edited table is derived again."""
    table = relative_position_index(64, DebertaConfig(position_buckets=8, max_relative_positions=32))
    first = kernels.relative_layout(table[:40, :40], 40, 8)
    assert first.reason is None and first.positions is None
    assert kernels.relative_layout(table[:40, :40], 40, 8) is first
    assert kernels.relative_layout(table[:30, :30], 30, 8) is not first
    subset = kernels.relative_layout(table[:40, :40][torch.tensor([[1, 5], [3, 9]])], 40, 8)
    assert subset.positions.tolist() == [[1, 5], [3, 9]] and subset.inverse[1, 9] == 1
    table[0, 1] += 1
    assert kernels.relative_layout(table[:40, :40], 40, 8).reason.startswith("rel_index is not a function")


# ---------------------------------------------------------------------------------------
# Packed (varlen) inputs: q, k, v [T, H, d] located by cu_seqlens, no padding anywhere
# ---------------------------------------------------------------------------------------
VARLEN_LENGTHS = [5, 33, 17]  # with 32-tiles: one sequence over two query and key tiles, the longest not last


def make_packed_inputs(lengths=VARLEN_LENGTHS, heads=2, head_dim=16, buckets=8, max_relative=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    config = DebertaConfig(position_buckets=buckets, max_relative_positions=max_relative)
    span, tokens, longest = config.relative_span, sum(lengths), max(lengths)

    def leaf(*shape):
        return torch.randn(*shape, generator=generator).requires_grad_()

    cu_seqlens = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    return dict(query=leaf(tokens, heads, head_dim), key=leaf(tokens, heads, head_dim),
                value=leaf(tokens, heads, head_dim), pos_key=leaf(heads, 2 * span, head_dim),
                pos_query=leaf(heads, 2 * span, head_dim), rel_index=relative_position_index(longest, config),
                mask=Packing(cu_seqlens, longest, tokens), scale=1 / math.sqrt(head_dim * 3))


def test_varlen_matches_eager_on_the_padded_batch(kernels, monkeypatch):
    """Sequences of 5, 33 and 17 tokens packed end to end: the varlen kernels' output and
    gradients of q, k, v, pos_key and pos_query equal eager's on the padded batch, and
    nothing on the fused path pads the packed tokens."""
    inputs = make_packed_inputs()
    reference = forward_backward(eager_attention, inputs)
    with monkeypatch.context() as patch:
        patch.setattr(Packing, "pad", lambda *a, **k: pytest.fail("the fused path padded the packed tokens"))
        fused = forward_backward(kernels_backend(kernels), inputs)
    assert fused[0].shape == inputs["query"].shape
    assert_close(fused, reference, 2e-5)


def test_varlen_dropout_regenerates_its_mask(kernels):
    """Dropout on packed inputs: each sequence b of n tokens draws the keep mask of (batch b,
    head) over its own n x n pairs; eager's arithmetic with that mask, sequence by sequence,
    gives the kernels' output and gradients, so backward regenerated forward's mask."""
    inputs = make_packed_inputs(lengths=[9, 33], seed=1)
    dropout_p, heads = 0.3, 2
    torch.manual_seed(3)
    seed = kernels.draw_dropout_seed()
    torch.manual_seed(3)  # the backend draws the same seed
    fused = forward_backward(kernels_backend(kernels), inputs, dropout_p=dropout_p)

    def reference(query, key, value, pos_key, pos_query, rel_index, mask, scale):
        outputs, bounds = [], mask.cu_seqlens.tolist()
        for sequence, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
            n = stop - start
            kept = kernels.dropout_keep_mask(seed, (mask.batch, heads, n, n), dropout_p, "cpu")[sequence:sequence + 1]
            one = {name: tensor[start:stop].transpose(0, 1)[None] for name, tensor in
                   dict(query=query, key=key, value=value).items()}
            everything = torch.ones(1, n, dtype=torch.long)
            out = reference_with_dropout(dict(one, pos_key=pos_key, pos_query=pos_query, rel_index=rel_index[:n, :n],
                                              mask=everything, query_mask=everything, scale=scale), kept, dropout_p)
            outputs.append(out[0].transpose(0, 1))
        return torch.cat(outputs)

    assert_close(fused, forward_backward(reference, inputs), 2e-5)
    assert not torch.allclose(fused[0], forward_backward(eager_attention, inputs)[0], atol=1e-2)  # dropout acted


def test_varlen_falls_back_to_sdpa_on_the_padded_batch(kernels, monkeypatch):
    inputs = make_packed_inputs()
    monkeypatch.setattr(kernels, "INTERPRETED", False)  # as if the kernels were compiled for CUDA
    monkeypatch.setattr(backend_module, "_logged_reasons", set())
    out = backend_module.triton_attention(**inputs)
    assert torch.equal(out, sdpa_attention(**inputs))
    assert (out - forward_backward(eager_attention, inputs)[0]).abs().max() < 1e-5


def test_packed_model_matches_padded_eager(kernels):
    """A tiny v3 classifier (buckets, nGiE convolution) with the triton backend on packed
    inputs gives the padded batch's logits, loss and parameter gradients through eager."""
    config = dict(TINY, num_labels=3, conv_kernel_size=3)
    generator = torch.Generator().manual_seed(0)
    ids = [torch.randint(5, 100, (n,), generator=generator) for n in VARLEN_LENGTHS]
    labels = torch.tensor([2, 0, 1])
    longest = max(VARLEN_LENGTHS)
    padded_ids = torch.stack([torch.cat([seq, seq.new_zeros(longest - len(seq))]) for seq in ids])
    attention_mask = (torch.arange(longest) < torch.tensor(VARLEN_LENGTHS)[:, None]).long()
    results = []
    for backend, inputs in (("eager", dict(input_ids=padded_ids, attention_mask=attention_mask)),
                            ("triton", dict(input_ids=torch.cat(ids), max_seqlen=longest,
                                            cu_seqlens=torch.tensor([0] + VARLEN_LENGTHS).cumsum(0).int()))):
        torch.manual_seed(0)
        model = build_model(DebertaConfig(**config, attention_backend=backend), "sequence_classification").train()
        out = model(**inputs, labels=labels)
        out.loss.backward()
        results.append((out.logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (logits_eager, grads_eager), (logits_fused, grads_fused) = results
    torch.testing.assert_close(logits_fused, logits_eager, atol=1e-5, rtol=1e-4)
    assert grads_eager.keys() == grads_fused.keys()
    for name, grad in grads_eager.items():
        torch.testing.assert_close(grads_fused[name], grad, atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("packed", [False, True])
def test_a_compiled_layer_runs_the_kernels_as_one_operator(kernels, packed):
    """torch.compile neither traces into the kernels (their launch, the layout cache and its
    check run as in eager mode) nor breaks the layer's graph around them: one graph, and the
    compiled layer's output and gradients, attention dropout included, are eager's."""
    import torch._dynamo
    from deberta.model import DebertaForMaskedLM
    config = DebertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64, max_relative_positions=32,
                           position_buckets=8, attention_backend="triton", hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.2)
    torch.manual_seed(0)
    encoder = DebertaForMaskedLM(config).train().deberta.encoder
    layer = encoder.layer[0]
    lengths = [24, 17, 9]
    rel_embeddings, rel_index = encoder.relative_inputs(max(lengths), torch.device("cpu"))
    if packed:
        states = torch.randn(sum(lengths), 32)
        mask = Packing(torch.tensor([0] + lengths).cumsum(0).to(torch.int32), max(lengths), sum(lengths))
    else:
        states = torch.randn(len(lengths), max(lengths), 32)
        mask = (torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]).long()
    arguments = (states, mask, rel_embeddings, rel_index)
    explanation = torch._dynamo.explain(layer.forward)(*arguments)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons

    def run(forward):
        encoder.zero_grad()
        inputs = states.clone().requires_grad_()
        rel_embeddings, _ = encoder.relative_inputs(max(lengths), torch.device("cpu"))
        torch.manual_seed(7)  # the same dropout seed for both
        out = forward(inputs, mask, rel_embeddings, rel_index)
        out.pow(2).sum().backward()
        return [out, inputs.grad] + [p.grad.clone() for p in encoder.parameters() if p.grad is not None]

    eager = run(layer.forward)
    compiled = run(torch.compile(layer.forward, backend="aot_eager", fullgraph=True))
    for got, expected in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
