"""Disentangled attention fused in Triton: forward and backward without a [B, H, Lq, L] tensor.

The scores of ``deberta.attention`` (its module docstring has the exact computation),

    s[i, j] = scale * (q_i . k_j + q_i . pos_key[r(i, j)] + k_j . pos_query[r(i, j)]),

are computed tile by tile with flash attention's online softmax; forward keeps only the
output and the per-row log-sum-exp, and backward recomputes each tile's probabilities. The
three kernels share their tile steps as @triton.jit helpers, which Triton inlines: loading
a block (``_key_block``, ``_backward_query_block``), the scores of a tile (``_tile_scores``),
the windows of distances (``_tile_distances``, ``_window``).

How the relative terms are computed inside a tile. r(i, j) depends on the distance only:
r(i, j) = f(p_i - j), where p_i is query i's position among the keys (p_i = i in
self-attention; the enhanced mask decoder's queries sit at the masked positions) and f is
the (bucketed, clamped) index, given as a table over distances -(L-1) .. L-1. A tile of
BLOCK_M queries and BLOCK_N keys covers the distances [min p - (j0 + BLOCK_N - 1), max p - j0]:
BLOCK_M + BLOCK_N - 1 of them in self-attention, one WINDOW. For that window the kernel
loads the rows pos_key[f(delta)] (a [WINDOW, d] gather from a small table that stays in
cache) and multiplies once on the tensor cores,

    by_delta = q_tile @ pos_key[f(window)]^T      [BLOCK_M, WINDOW]
    c2p[i, j] = by_delta[i, p_i - j - window_start]   (tl.gather along the window axis)

and likewise pos_query[f(window)] @ k_tile^T gathered along its first axis for p2c. This
costs twice the FLOPs of q @ k^T per term, in exchange for never writing the [L, 2S]
products or a bias to memory, and it needs no assumption about f: bucketing, clamping and
the window of a query subset (which may span several WINDOWs: a loop) all work alike.

Backward inverts the same gathers. For a fixed query i the map j -> p_i - j is one-to-one,
so the score gradients of a tile rearranged by distance, G[i, delta] = dS[i, p_i - delta],
are another gather (``_gather_by_distance``); then dq += G @ pos_key[f(window)] and the
window's pos_key gradient is G^T @ q_tile, added atomically into a per-head buffer indexed
by distance (fp32), which an index_add folds into the 2S rows afterwards. For p2c, with a fixed key j, distinct query
positions make i -> p_i - j one-to-one too (its inverse is the table ``inverse``).

Packed inputs (varlen): query, key and value [T, H, d] hold B sequences end to end,
located by ``cu_seqlens`` [B+1]. The grid is (tiles of the longest sequence, B * H); each
program reads its sequence's first token and length, returns at once when its tile starts
past that length, and loops over that sequence's keys only. Rows are the tokens' places
within their sequence, so the relative terms and the distance table are those of a padded
batch of the longest length; nothing is padded or copied. Padded and varlen programs
differ only in where a sequence starts (the batch index times the batch stride, or the
first token times the token stride) and in its length (the batch's, or its own).

Attention dropout draws its keep mask from Philox with one seed per call and the counter
(row, column) of each (batch, head), so backward regenerates the same mask; a packed
sequence b of n tokens draws the mask a padded batch of length n would give its row b.

For torch.compile the kernels are two custom operators, ``deberta::disentangled_attention``
and its backward: a compiled layer holds them as single nodes of its graph, without tracing
into the launches or the layout cache (see ``disentangled_attention_op``).

Precision: every product accumulates in fp32 and the scale is applied to the fp32 sum, so
no half-precision intermediate exists that could overflow (the failure the pre-scaling of
``eager`` and ``sdpa`` avoids); probabilities enter the P @ V product in the input dtype,
as in flash attention.
"""
from __future__ import annotations

import os
import weakref
from typing import Optional

import torch
import triton
import triton.language as tl

from ..attention import Packing

# Whether the kernels below run in Triton's interpreter (TRITON_INTERPRET=1 when this module
# was first imported): then they take CPU tensors, else CUDA tensors.
INTERPRETED = (bool(triton.knobs.runtime.interpret) if hasattr(triton, "knobs")
               else os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"))



def _interpreter_compatibility() -> None:
    """Two gaps of Triton 3.6's interpreter, closed while an interpreted kernel runs:
    - it passes scalar arguments as 1-element arrays and converts them with int(), which
      NumPy 2 refuses (a loop bound such as ``range(0, length, ...)`` fails); later Triton
      squeezes first;
    - Triton's own library functions (tl.max, tl.rand, ...) are interpreted only if
      TRITON_INTERPRET was set before ``import triton``; imported earlier (torch._dynamo
      imports it), they refuse to be called, so they are run interpreted here too;
    - tl.dot multiplies bf16 operands as their raw 16-bit integers (up to 3.9 at least);
      here they are widened to fp32 first, which is what tensor cores compute (exact
      products, fp32 sums)."""
    import inspect

    import numpy as np

    from triton.runtime import interpreter
    from triton.runtime.jit import JITFunction

    original = interpreter._patch_lang_tensor
    if getattr(original, "closes_deberta_gaps", False):
        return
    squeeze_missing = "squeeze" not in inspect.getsource(original)
    library_compiled = isinstance(tl.max, JITFunction)
    interpreted = {}

    def call_interpreted(function, *args, **kwargs):
        if function.fn not in interpreted:
            interpreted[function.fn] = interpreter.InterpretedFunction(function.fn)
        return interpreted[function.fn](*args, **kwargs)

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        if squeeze_missing:
            scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))
        if library_compiled:
            scope.set_attr(JITFunction, "__call__", call_interpreted)

    patch_lang_tensor.closes_deberta_gaps = True
    interpreter._patch_lang_tensor = patch_lang_tensor

    original_dot = interpreter.InterpreterBuilder.create_dot

    def widened(operand):
        if operand.dtype != tl.bfloat16:
            return operand
        as_fp32 = interpreter._convert_float(operand.data, tl.bfloat16, tl.float32, None).view(np.float32)
        return interpreter.TensorHandle(as_fp32, tl.float32)

    def create_dot(self, a, b, *rest):
        return original_dot(self, widened(a), widened(b), *rest)

    interpreter.InterpreterBuilder.create_dot = create_dot


if INTERPRETED:
    _interpreter_compatibility()

_LOG2E = 1.4426950408889634  # scores are kept in log2 units: exp2 is the hardware's exponential

# A masked pair's score (log2 units): finite, so that a query whose every key is masked
# gets a uniform distribution over all keys, as the reference's finfo.min fill gives.
MASKED_SCORE = tl.constexpr(-1.0e30)


# ---------------------------------------------------------------------------------------
# Tile helpers: the steps that forward and both backward kernels share (Triton inlines them)
# ---------------------------------------------------------------------------------------
@triton.jit
def _program(CU_SEQLENS, heads, query_length, length, VARLEN: tl.constexpr):
    """(block, batch * heads + head, batch, head, sequence, query length, key length) of
    this program. Padded, ``sequence`` is the batch index, which the batch strides multiply;
    varlen (packed [T, H, d]), it is the sequence's first token, which the token strides
    multiply, and both lengths are the sequence's own. ``sequence`` is int64 for the
    offsets; the kernels widen ``head`` once past their early return."""
    block, batch_head = tl.program_id(0), tl.program_id(1)
    batch, head = batch_head // heads, batch_head % heads
    if VARLEN:
        start = tl.load(CU_SEQLENS + batch)
        own_length = tl.load(CU_SEQLENS + batch + 1) - start
        sequence, query_length, length = start.to(tl.int64), own_length, own_length
    else:
        sequence = batch.to(tl.int64)
    return block, batch_head, batch, head, sequence, query_length, length


@triton.jit
def _load_rows(base, rows, row_ok, stride_row, dims):
    return tl.load(base + rows[:, None] * stride_row + dims[None, :], mask=row_ok[:, None], other=0.0)


@triton.jit
def _row_statistics(LSE, DELTA, row_stats, rows, row_ok, stride_stats):
    """What backward keeps of each query row: forward's log-sum-exp and rowsum(dO * O)."""
    lse = tl.load(LSE + row_stats + rows * stride_stats, mask=row_ok, other=0.0)
    row_delta = tl.load(DELTA + row_stats + rows * stride_stats, mask=row_ok, other=0.0)
    return lse, row_delta


@triton.jit
def _backward_query_block(q_base, do_base, LSE, DELTA, row_stats, query_start, query_length, stride_q, stride_do,
                          stride_stats, dims, BLOCK_M: tl.constexpr):
    """The queries of one block as backward reads them: their rows, which exist, Q, dO and
    the row statistics."""
    rows = query_start + tl.arange(0, BLOCK_M)
    row_ok = rows < query_length
    q = _load_rows(q_base, rows, row_ok, stride_q, dims)
    do = _load_rows(do_base, rows, row_ok, stride_do, dims)
    lse, row_delta = _row_statistics(LSE, DELTA, row_stats, rows, row_ok, stride_stats)
    return rows, row_ok, q, do, lse, row_delta


@triton.jit
def _key_block(k_base, v_base, key_start, length, stride_k, stride_v, dims, BLOCK_N: tl.constexpr):
    """The keys of one block: their columns, which exist, and their K and V rows."""
    cols = key_start + tl.arange(0, BLOCK_N)
    col_ok = cols < length
    k = _load_rows(k_base, cols, col_ok, stride_k, dims)
    return cols, col_ok, k, _load_rows(v_base, cols, col_ok, stride_v, dims)


@triton.jit
def _query_positions(positions, batch, stride_positions, rows, row_ok, QUERY_POSITIONS: tl.constexpr):
    """Each query's position among the keys, and the lowest and highest of the block."""
    if QUERY_POSITIONS:
        pos = tl.load(positions + batch * stride_positions + rows, mask=row_ok, other=0)
    else:
        pos = rows
    lowest = tl.min(tl.where(row_ok, pos, 1 << 30), axis=0)
    highest = tl.max(tl.where(row_ok, pos, -(1 << 30)), axis=0)
    return pos, lowest, highest


@triton.jit
def _tile_distances(q_lowest, q_highest, key_start, BLOCK_N: tl.constexpr):
    """The lowest and highest distance p_i - j of a tile; its windows start at the lowest
    and step by WINDOW."""
    return q_lowest - key_start - BLOCK_N + 1, q_highest - key_start


@triton.jit
def _window(table, delta_start, delta_stop, table_length, WINDOW: tl.constexpr):
    """The distances of one window, their rows f(delta) of the relative tables, and which
    of them exist (within the tile's range and with a row). The table covers the distances
    -(table_length - 1) .. table_length - 1."""
    deltas = delta_start + tl.arange(0, WINDOW)
    usable = (deltas <= delta_stop) & (deltas > -table_length) & (deltas < table_length)
    rel_rows = tl.load(table + deltas + table_length - 1, mask=usable, other=-1)
    return deltas, rel_rows, usable & (rel_rows >= 0)


@triton.jit
def _kept(seed, batch_head, rows, cols, length, dropout_p):
    """The dropout keep mask of a tile: one Philox stream per (call, batch, head), counter
    row * L + column, so that backward and the debug path draw the same numbers."""
    return tl.rand(seed + batch_head, rows[:, None] * length + cols[None, :]) >= dropout_p


@triton.jit
def _raw_scores(q, k, q_pos, q_lowest, q_highest, key_start, cols, pos_key, pos_query, table,
                stride_rel, table_length, dims,
                HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, BLOCK_N: tl.constexpr,
                WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    """q.k + q.pos_key[r] + k.pos_query[r] of one tile, fp32, unscaled."""
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    if HAS_C2P or HAS_P2C:
        lowest, highest = _tile_distances(q_lowest, q_highest, key_start, BLOCK_N)
        for delta_start in range(lowest, highest + 1, WINDOW):
            deltas, rel_rows, usable = _window(table, delta_start, highest, table_length, WINDOW)
            local = q_pos[:, None] - cols[None, :] - delta_start  # pair (i, j) -> its place in the window
            inside = (local >= 0) & (local < WINDOW)
            local = tl.minimum(tl.maximum(local, 0), WINDOW - 1)
            if HAS_C2P:
                rel = _load_rows(pos_key, rel_rows, usable, stride_rel, dims)
                by_delta = tl.dot(q, tl.trans(rel), input_precision=PRECISION)  # [BLOCK_M, WINDOW]
                scores += tl.where(inside, tl.gather(by_delta, local, 1), 0.0)
            if HAS_P2C:
                rel = _load_rows(pos_query, rel_rows, usable, stride_rel, dims)
                by_delta = tl.dot(rel, tl.trans(k), input_precision=PRECISION)  # [WINDOW, BLOCK_N]
                scores += tl.where(inside, tl.gather(by_delta, local, 0), 0.0)
    return scores


@triton.jit
def _allowed_pairs(key_mask, query_mask, batch, stride_km, stride_qm, rows, row_ok, cols, col_ok,
                   HAS_KEY_MASK: tl.constexpr, HAS_QUERY_MASK: tl.constexpr):
    allowed = row_ok[:, None] & col_ok[None, :]
    if HAS_KEY_MASK:
        key_real = tl.load(key_mask + batch * stride_km + cols, mask=col_ok, other=0) != 0
        allowed = allowed & key_real[None, :]
    if HAS_QUERY_MASK:
        query_real = tl.load(query_mask + batch * stride_qm + rows, mask=row_ok, other=0) != 0
        allowed = allowed & query_real[:, None]
    return allowed


@triton.jit
def _tile_scores(q, k, q_pos, q_lowest, q_highest, key_start, rows, row_ok, cols, col_ok, pos_key, pos_query,
                 TABLE, KEY_MASK, QUERY_MASK, batch, scale_log2, srel_r, skm_b, sqm_b, table_length, dims,
                 HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, HAS_KEY_MASK: tl.constexpr,
                 HAS_QUERY_MASK: tl.constexpr, BLOCK_N: tl.constexpr, WINDOW: tl.constexpr,
                 PRECISION: tl.constexpr):
    """One tile's scores in log2 units (MASKED_SCORE at masked pairs, -inf past the keys),
    and which pairs the masks allow: what forward and backward both compute."""
    raw = _raw_scores(q, k, q_pos, q_lowest, q_highest, key_start, cols, pos_key, pos_query, TABLE,
                      srel_r, table_length, dims, HAS_C2P, HAS_P2C, BLOCK_N, WINDOW, PRECISION)
    allowed = _allowed_pairs(KEY_MASK, QUERY_MASK, batch, skm_b, sqm_b, rows, row_ok, cols, col_ok,
                             HAS_KEY_MASK, HAS_QUERY_MASK)
    scores = tl.where(allowed, raw * scale_log2, MASKED_SCORE)
    return tl.where(col_ok[None, :], scores, float("-inf")), allowed


@triton.jit
def _tile_probabilities(q, k, v, do, lse, row_delta, q_pos, q_lowest, q_highest, key_start, rows, row_ok,
                        cols, col_ok, pos_key, pos_query, TABLE, KEY_MASK, QUERY_MASK, batch, batch_head,
                        seed, dropout_p, scale_log2, srel_r, skm_b, sqm_b, length, table_length, dims,
                        HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, HAS_KEY_MASK: tl.constexpr,
                        HAS_QUERY_MASK: tl.constexpr, DROPOUT: tl.constexpr, BLOCK_N: tl.constexpr,
                        WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    """Backward's recomputation of one tile: the probabilities after dropout (for dV) and
    dS, the gradient of the (scaled) scores, zero at masked pairs."""
    scores, allowed = _tile_scores(q, k, q_pos, q_lowest, q_highest, key_start, rows, row_ok, cols, col_ok,
                                   pos_key, pos_query, TABLE, KEY_MASK, QUERY_MASK, batch, scale_log2, srel_r,
                                   skm_b, sqm_b, table_length, dims, HAS_C2P, HAS_P2C, HAS_KEY_MASK,
                                   HAS_QUERY_MASK, BLOCK_N, WINDOW, PRECISION)
    probs = tl.where(lse[:, None] == float("inf"), 1.0 / length, tl.math.exp2(scores - lse[:, None]))
    probs = tl.where(row_ok[:, None] & col_ok[None, :], probs, 0.0)
    dprobs = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    if DROPOUT:
        kept = _kept(seed, batch_head, rows, cols, length, dropout_p)
        dropped = tl.where(kept, probs / (1.0 - dropout_p), 0.0)
        dprobs = tl.where(kept, dprobs / (1.0 - dropout_p), 0.0)
    else:
        dropped = probs
    dscores = tl.where(allowed, probs * (dprobs - row_delta[:, None]), 0.0)
    return dropped, dscores


@triton.jit
def _gather_by_distance(dscores, places, usable, AXIS: tl.constexpr, SIZE: tl.constexpr):
    """Backward's gather: G = dS taken along AXIS (the keys for c2p, the queries for p2c) at
    the place of each (row, distance) pair in this block, zero where that place is outside
    the block (0 .. SIZE - 1) or the distance is not usable."""
    found = (places >= 0) & (places < SIZE) & tl.expand_dims(usable, 1 - AXIS)
    places = tl.minimum(tl.maximum(places, 0), SIZE - 1)
    return tl.where(found, tl.gather(dscores, places, AXIS), 0.0)


@triton.jit
def _p2c_places(deltas, cols, query_start, INVERSE, batch, sinv_b, length, QUERY_POSITIONS: tl.constexpr):
    """[WINDOW, BLOCK_N]: the place in the query block of the query at position j + delta
    (with a query subset, ``inverse`` says which query sits there, if any)."""
    if QUERY_POSITIONS:
        position = deltas[:, None] + cols[None, :]
        on_key = (position >= 0) & (position < length)
        local = tl.load(INVERSE + batch * sinv_b + position, mask=on_key, other=-1)
        local = tl.where(local >= 0, local - query_start, -1)
    else:
        local = deltas[:, None] + cols[None, :] - query_start
    return local


@triton.jit
def _add_by_distance(dpos, deltas, usable, grad, dims, table_length, HEAD_DIM: tl.constexpr):
    """Adds a window's relative gradient [WINDOW, d] to the head's fp32 rows by distance."""
    tl.atomic_add(dpos + (deltas + table_length - 1)[:, None] * HEAD_DIM + dims[None, :], grad,
                  mask=usable[:, None], sem="relaxed")


# ---------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------
@triton.jit
def _forward_kernel(Q, K, V, OUT, LSE, POS_KEY, POS_QUERY, TABLE, POSITIONS, KEY_MASK, QUERY_MASK, CU_SEQLENS,
                    seed, dropout_p, scale_log2,
                    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_l, slse_b, slse_h, slse_l,
                    srel_h, srel_r, spos_b, skm_b, sqm_b,
                    heads, query_length, length, table_length,
                    HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, HAS_KEY_MASK: tl.constexpr,
                    HAS_QUERY_MASK: tl.constexpr, QUERY_POSITIONS: tl.constexpr, DROPOUT: tl.constexpr,
                    VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                    WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    block, batch_head, batch, head, sequence, query_length, length = _program(CU_SEQLENS, heads, query_length,
                                                                              length, VARLEN)
    if VARLEN:
        if block * BLOCK_M >= query_length:  # the grid covers the longest sequence
            return
    head = head.to(tl.int64)
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < query_length
    dims = tl.arange(0, HEAD_DIM)
    q = _load_rows(Q + sequence * sq_b + head * sq_h, rows, row_ok, sq_l, dims)
    q_pos, q_lowest, q_highest = _query_positions(POSITIONS, batch, spos_b, rows, row_ok, QUERY_POSITIONS)
    k_base, v_base = K + sequence * sk_b + head * sk_h, V + sequence * sv_b + head * sv_h
    pos_key, pos_query = POS_KEY + head * srel_h, POS_QUERY + head * srel_h

    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for key_start in range(0, length, BLOCK_N):
        cols, col_ok, k, v = _key_block(k_base, v_base, key_start, length, sk_l, sv_l, dims, BLOCK_N)
        scores, _ = _tile_scores(q, k, q_pos, q_lowest, q_highest, key_start, rows, row_ok, cols, col_ok, pos_key,
                                 pos_query, TABLE, KEY_MASK, QUERY_MASK, batch, scale_log2, srel_r, skm_b, sqm_b,
                                 table_length, dims, HAS_C2P, HAS_P2C, HAS_KEY_MASK, HAS_QUERY_MASK, BLOCK_N,
                                 WINDOW, PRECISION)
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        rescale = tl.math.exp2(row_max - new_max)
        probs = tl.math.exp2(scores - new_max[:, None])
        row_sum = row_sum * rescale + tl.sum(probs, axis=1)
        if DROPOUT:
            kept = _kept(seed, batch_head, rows, cols, length, dropout_p)
            probs = tl.where(kept, probs / (1.0 - dropout_p), 0.0)
        acc = acc * rescale[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=PRECISION)
        row_max = new_max
    out = acc / row_sum[:, None]
    tl.store(OUT + sequence * so_b + head * so_h + rows[:, None] * so_l + dims[None, :],
             out.to(OUT.dtype.element_ty), mask=row_ok[:, None])
    # A row whose every pair is masked is uniform over the keys, but MASKED_SCORE + log2(L)
    # does not exist in fp32: +inf marks such rows for backward.
    lse = tl.where(row_max == MASKED_SCORE, float("inf"), row_max + tl.math.log2(row_sum))
    tl.store(LSE + sequence * slse_b + head * slse_h + rows * slse_l, lse, mask=row_ok)


@triton.jit
def _backward_key_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, DPOS_QUERY, POS_KEY, POS_QUERY, TABLE,
                         POSITIONS, INVERSE, KEY_MASK, QUERY_MASK, CU_SEQLENS,
                         seed, dropout_p, scale, scale_log2,
                         sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, sdo_b, sdo_h, sdo_l,
                         sdk_b, sdk_h, sdk_l, sdv_b, sdv_h, sdv_l, slse_b, slse_h, slse_l,
                         srel_h, srel_r, spos_b, sinv_b, skm_b, sqm_b,
                         heads, query_length, length, table_length,
                         HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, HAS_KEY_MASK: tl.constexpr,
                         HAS_QUERY_MASK: tl.constexpr, QUERY_POSITIONS: tl.constexpr, DROPOUT: tl.constexpr,
                         VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         HEAD_DIM: tl.constexpr, WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    """One key block against every query block: dK, dV and the p2c part of dPosQuery."""
    block, batch_head, batch, head, sequence, query_length, length = _program(CU_SEQLENS, heads, query_length,
                                                                              length, VARLEN)
    if VARLEN:
        if block * BLOCK_N >= length:
            return
    head = head.to(tl.int64)
    key_start = block * BLOCK_N
    cols = key_start + tl.arange(0, BLOCK_N)
    col_ok = cols < length
    dims = tl.arange(0, HEAD_DIM)
    k = _load_rows(K + sequence * sk_b + head * sk_h, cols, col_ok, sk_l, dims)
    v = _load_rows(V + sequence * sv_b + head * sv_h, cols, col_ok, sv_l, dims)
    q_base, do_base = Q + sequence * sq_b + head * sq_h, DO + sequence * sdo_b + head * sdo_h
    pos_key, pos_query = POS_KEY + head * srel_h, POS_QUERY + head * srel_h
    dpos_query = DPOS_QUERY + head * (2 * table_length - 1) * HEAD_DIM
    row_stats = sequence * slse_b + head * slse_h

    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for query_start in range(0, query_length, BLOCK_M):
        rows, row_ok, q, do, lse, row_delta = _backward_query_block(
            q_base, do_base, LSE, DELTA, row_stats, query_start, query_length, sq_l, sdo_l, slse_l, dims, BLOCK_M)
        q_pos, q_lowest, q_highest = _query_positions(POSITIONS, batch, spos_b, rows, row_ok, QUERY_POSITIONS)
        dropped, dscores = _tile_probabilities(
            q, k, v, do, lse, row_delta, q_pos, q_lowest, q_highest, key_start, rows, row_ok, cols, col_ok,
            pos_key, pos_query, TABLE, KEY_MASK, QUERY_MASK, batch, batch_head, seed, dropout_p, scale_log2,
            srel_r, skm_b, sqm_b, length, table_length, dims, HAS_C2P, HAS_P2C, HAS_KEY_MASK, HAS_QUERY_MASK,
            DROPOUT, BLOCK_N, WINDOW, PRECISION)
        dv += tl.dot(tl.trans(dropped.to(do.dtype)), do, input_precision=PRECISION)
        dk += tl.dot(tl.trans(dscores.to(q.dtype)), q, input_precision=PRECISION)
        if HAS_P2C:
            lowest, highest = _tile_distances(q_lowest, q_highest, key_start, BLOCK_N)
            for delta_start in range(lowest, highest + 1, WINDOW):
                deltas, rel_rows, usable = _window(TABLE, delta_start, highest, table_length, WINDOW)
                # by_delta[delta, j] = dS[i, j] for the query i at position j + delta.
                local = _p2c_places(deltas, cols, query_start, INVERSE, batch, sinv_b, length, QUERY_POSITIONS)
                by_delta = _gather_by_distance(dscores, local, usable, 0, BLOCK_M).to(k.dtype)  # [WINDOW, BLOCK_N]
                rel = _load_rows(pos_query, rel_rows, usable, srel_r, dims)
                dk += tl.dot(tl.trans(by_delta), rel, input_precision=PRECISION)
                _add_by_distance(dpos_query, deltas, usable,
                                 tl.dot(by_delta, k, input_precision=PRECISION) * scale, dims, table_length,
                                 HEAD_DIM)
    tl.store(DK + sequence * sdk_b + head * sdk_h + cols[:, None] * sdk_l + dims[None, :],
             (dk * scale).to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + sequence * sdv_b + head * sdv_h + cols[:, None] * sdv_l + dims[None, :],
             dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _backward_query_kernel(Q, K, V, DO, LSE, DELTA, DQ, DPOS_KEY, POS_KEY, POS_QUERY, TABLE,
                           POSITIONS, KEY_MASK, QUERY_MASK, CU_SEQLENS,
                           seed, dropout_p, scale, scale_log2,
                           sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, sdo_b, sdo_h, sdo_l,
                           sdq_b, sdq_h, sdq_l, slse_b, slse_h, slse_l,
                           srel_h, srel_r, spos_b, skm_b, sqm_b,
                           heads, query_length, length, table_length,
                           HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, HAS_KEY_MASK: tl.constexpr,
                           HAS_QUERY_MASK: tl.constexpr, QUERY_POSITIONS: tl.constexpr, DROPOUT: tl.constexpr,
                           VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           HEAD_DIM: tl.constexpr, WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    """One query block against every key block: dQ and the c2p part of dPosKey."""
    block, batch_head, batch, head, sequence, query_length, length = _program(CU_SEQLENS, heads, query_length,
                                                                              length, VARLEN)
    if VARLEN:
        if block * BLOCK_M >= query_length:
            return
    head = head.to(tl.int64)
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < query_length
    dims = tl.arange(0, HEAD_DIM)
    q = _load_rows(Q + sequence * sq_b + head * sq_h, rows, row_ok, sq_l, dims)
    do = _load_rows(DO + sequence * sdo_b + head * sdo_h, rows, row_ok, sdo_l, dims)
    row_stats = sequence * slse_b + head * slse_h
    lse, row_delta = _row_statistics(LSE, DELTA, row_stats, rows, row_ok, slse_l)
    q_pos, q_lowest, q_highest = _query_positions(POSITIONS, batch, spos_b, rows, row_ok, QUERY_POSITIONS)
    k_base, v_base = K + sequence * sk_b + head * sk_h, V + sequence * sv_b + head * sv_h
    pos_key, pos_query = POS_KEY + head * srel_h, POS_QUERY + head * srel_h
    dpos_key = DPOS_KEY + head * (2 * table_length - 1) * HEAD_DIM

    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for key_start in range(0, length, BLOCK_N):
        cols, col_ok, k, v = _key_block(k_base, v_base, key_start, length, sk_l, sv_l, dims, BLOCK_N)
        _, dscores = _tile_probabilities(
            q, k, v, do, lse, row_delta, q_pos, q_lowest, q_highest, key_start, rows, row_ok, cols, col_ok,
            pos_key, pos_query, TABLE, KEY_MASK, QUERY_MASK, batch, batch_head, seed, dropout_p, scale_log2,
            srel_r, skm_b, sqm_b, length, table_length, dims, HAS_C2P, HAS_P2C, HAS_KEY_MASK, HAS_QUERY_MASK,
            DROPOUT, BLOCK_N, WINDOW, PRECISION)
        dq += tl.dot(dscores.to(k.dtype), k, input_precision=PRECISION)
        if HAS_C2P:
            lowest, highest = _tile_distances(q_lowest, q_highest, key_start, BLOCK_N)
            for delta_start in range(lowest, highest + 1, WINDOW):
                deltas, rel_rows, usable = _window(TABLE, delta_start, highest, table_length, WINDOW)
                # by_delta[i, delta] = dS[i, j] for the key j at distance delta from query i.
                local = q_pos[:, None] - deltas[None, :] - key_start
                by_delta = _gather_by_distance(dscores, local, usable, 1, BLOCK_N).to(q.dtype)  # [BLOCK_M, WINDOW]
                rel = _load_rows(pos_key, rel_rows, usable, srel_r, dims)
                dq += tl.dot(by_delta, rel, input_precision=PRECISION)
                _add_by_distance(dpos_key, deltas, usable,
                                 tl.dot(tl.trans(by_delta), q, input_precision=PRECISION) * scale, dims,
                                 table_length, HEAD_DIM)
    tl.store(DQ + sequence * sdq_b + head * sdq_h + rows[:, None] * sdq_l + dims[None, :],
             (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _keep_mask_kernel(KEPT, seed, dropout_p, heads, query_length, length,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Debug path: writes the dropout keep mask the attention kernels draw, [B, H, Lq, L]."""
    block, batch_head = tl.program_id(0), tl.program_id(1)
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    base = KEPT + batch_head.to(tl.int64) * query_length * length
    for key_start in range(0, length, BLOCK_N):
        cols = key_start + tl.arange(0, BLOCK_N)
        kept = _kept(seed, batch_head, rows, cols, length, dropout_p)
        tl.store(base + rows[:, None] * length + cols[None, :], kept.to(tl.int8),
                 mask=(rows < query_length)[:, None] & (cols < length)[None, :])


# ---------------------------------------------------------------------------------------
# The relative index as a function of distance
# ---------------------------------------------------------------------------------------
class RelativeLayout:
    """rel_index [Lq, L] or [B, Lq, L] as the kernels read it: r(i, j) = table[p_i - j + L - 1].

    ``positions`` [B or 1, Lq] (None when p_i = i), ``inverse`` [B or 1, L]: the query at
    each key position or -1. ``reason`` says why the index has no such form (then the
    kernels cannot compute it; the caller falls back)."""

    def __init__(self, table=None, positions=None, inverse=None, reason=None):
        self.table, self.positions, self.inverse, self.reason = table, positions, inverse, reason

    @classmethod
    def of(cls, rel_index: torch.Tensor, length: int, span: int) -> "RelativeLayout":
        """Derives the table from the index: p_i is where row i holds f(0) = span (the index
        of distance 0, as every DeBERTa relative index has), and each entry then gives
        f(p_i - j). One synchronising check confirms that the index is such a function."""
        rel = rel_index if rel_index.dim() == 3 else rel_index.unsqueeze(0)
        query_length = rel.shape[1]
        at_zero = rel == span
        positions = at_zero.to(torch.int8).argmax(-1)  # [B', Lq]
        keys = torch.arange(length, device=rel.device)
        distance = positions[..., None] - keys + (length - 1)  # [B', Lq, L], in [0, 2L - 1)
        table = torch.full((2 * length - 1,), -1, dtype=torch.long, device=rel.device)
        table.scatter_(0, distance.flatten(), rel.flatten())
        ordered = positions.sort(-1).values
        if query_length == length and rel.shape[0] == 1:
            self_attention = (positions == keys).all()
        else:
            self_attention = torch.zeros((), dtype=torch.bool, device=rel.device)
        checks = torch.stack([at_zero.any(-1).all() & (table[distance] == rel).all(),
                              (ordered[..., 1:] > ordered[..., :-1]).all(), self_attention]).tolist()
        is_function_of_distance, distinct, self_attention = checks
        if not is_function_of_distance:
            return cls(reason="rel_index is not a function of the distance i - j with r(i, i) = S")
        if not distinct:
            return cls(reason="two queries sit at the same key position")
        table = table.to(torch.int32)
        if self_attention:
            return cls(table)
        inverse = torch.full((rel.shape[0], length), -1, dtype=torch.int32, device=rel.device)
        inverse.scatter_(1, positions, torch.arange(query_length, dtype=torch.int32,
                                                    device=rel.device).expand_as(positions).contiguous())
        return cls(table, positions.to(torch.int32).contiguous(), inverse)


_LAYOUTS: dict[tuple, tuple] = {}  # (id(owner), view, length, span) -> (weak ref to owner, version, layout)


def relative_layout(rel_index: torch.Tensor, length: int, span: int) -> RelativeLayout:
    """RelativeLayout.of, cached: the encoder's index is a view of one table buffer that
    every layer of every step receives, so its derivation and check (one device
    synchronisation) run once. The cache holds the tensor that owns the memory (a view's
    base) by weak reference and checks its version, so an edited or freed index is never
    mistaken for another."""
    owner = rel_index._base if rel_index._base is not None else rel_index
    key = (id(owner), rel_index.storage_offset(), tuple(rel_index.shape), rel_index.stride(), length, span)
    cached = _LAYOUTS.get(key)
    if cached is not None and cached[0]() is owner and cached[1] == owner._version:
        return cached[2]
    layout = RelativeLayout.of(rel_index, length, span)
    for stale in [k for k, entry in _LAYOUTS.items() if entry[0]() is None]:
        del _LAYOUTS[stale]
    _LAYOUTS[key] = (weakref.ref(owner), owner._version, layout)
    return layout


# ---------------------------------------------------------------------------------------
# Launch and autograd
# ---------------------------------------------------------------------------------------
def _blocks(head_dim: int, device=None) -> tuple[int, int, int, int]:
    """(BLOCK_M = BLOCK_N, WINDOW, num_warps, num_stages) for a launch on ``device`` (None:
    a GPU with at least 128 KB of shared memory). The interpreter's cost is per operation,
    not per element: tiles of 32 keep its runs short while still covering several blocks in
    the tests."""
    if INTERPRETED:
        return 32, 64, 1, 1
    return gpu_tiles(head_dim, _shared_memory(device) if device is not None else 128 * 1024)


def gpu_tiles(head_dim: int, shared_memory: int) -> tuple[int, int, int, int]:
    """The tiles of a GPU with ``shared_memory`` bytes per block, untuned. Head size 128 runs
    one pipeline stage; its 64-wide backward needs 112 KB of shared memory (A100, H100), so
    GPUs with less (sm_86/89: 99 KB) get 32-wide tiles."""
    if head_dim <= 64:
        return 64, 128, 4, 2
    if shared_memory < 128 * 1024:
        return 32, 64, 4, 1
    return 64, 128, 8, 1


def _shared_memory(device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]


def _strides(t: torch.Tensor, varlen: bool = False) -> tuple[int, int, int]:
    """(sequence, head, row) strides as the kernels take them. Padded [B, H, L, ...]: the
    batch index times the batch stride; varlen [T, H, ...]: a sequence's first token times
    the token stride, which is also the row stride."""
    return t.stride(0), t.stride(1), t.stride(0) if varlen else t.stride(2)


def draw_dropout_seed() -> int:
    """One Philox seed per call from torch's CPU generator (no device synchronisation), so
    that torch.manual_seed makes runs repeat and activation checkpointing, which restores
    the RNG state, recomputes the same mask."""
    return int(torch.randint(0, 1 << 30, ()))


def _geometry(query, key, cu_seqlens, max_seqlen) -> tuple[int, int, int, int, int]:
    """(batch, heads, query length, key length, head size); varlen, both lengths are the
    longest sequence's, which sizes the grid and the distance table."""
    if cu_seqlens is None:
        batch, heads, query_length, head_dim = query.shape
        return batch, heads, query_length, key.shape[2], head_dim
    return cu_seqlens.shape[0] - 1, query.shape[1], max_seqlen, max_seqlen, query.shape[2]


def kernel_layout(rel_index: Optional[torch.Tensor], relative: Optional[torch.Tensor], length: int,
                  packed: bool) -> tuple[Optional[RelativeLayout], Optional[str]]:
    """(the cached layout of the index, None without relative terms; why the kernels cannot
    take it, or None)."""
    if relative is None:
        return None, None
    layout = relative_layout(rel_index, length, relative.shape[-2] // 2)
    if layout.reason is None and packed and layout.positions is not None:
        return layout, "packed queries away from their own positions (the varlen kernels run self-attention only)"
    return layout, layout.reason


def _layout(rel_index, relative, length: int, packed: bool) -> Optional[RelativeLayout]:
    """``kernel_layout`` for the kernels themselves. ``triton_attention`` falls back to sdpa
    for an index they cannot take, but under torch.compile it does not look at the index,
    and such an index is an error here."""
    layout, reason = kernel_layout(rel_index, relative, length, packed)
    if reason is not None:
        raise ValueError(f"attention_backend='triton' cannot take this relative index ({reason}): eager "
                         f"layers run 'sdpa' for it, compiled ones need attention_backend='sdpa'")
    return layout


# The kernels are one operator each way for torch.compile: it neither traces into them (the
# launch, the layout cache and its one synchronising check run as they do in eager mode) nor
# breaks the compiled layer's graph around them.
@torch.library.custom_op("deberta::disentangled_attention", mutates_args=())
def disentangled_attention_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              pos_key: Optional[torch.Tensor], pos_query: Optional[torch.Tensor],
                              rel_index: Optional[torch.Tensor], key_mask: Optional[torch.Tensor],
                              query_mask: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
                              max_seqlen: int, scale: float, dropout_p: float,
                              seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output, per-row log-sum-exp, the dropout seed as a CPU int64 scalar). Padded inputs
    [B, H, L, d], or packed ones [T, H, d] located by ``cu_seqlens`` [B+1] (int32) with
    ``max_seqlen`` (then the masks are None). ``seed`` < 0: drawn here (``draw_dropout_seed``)."""
    varlen = cu_seqlens is not None
    batch, heads, query_length, length, head_dim = _geometry(query, key, cu_seqlens, max_seqlen)
    relative = pos_key if pos_key is not None else pos_query
    layout = _layout(rel_index, relative, length, varlen)
    if seed < 0:
        seed = draw_dropout_seed() if dropout_p > 0 else 0
    block, window, warps, stages = _blocks(head_dim, query.device)
    out, lse = _forward_outputs(query, varlen)
    dummy = query.new_empty(0)
    args = _launch_args(relative, layout, key_mask, query_mask, dummy)
    _forward_kernel[(triton.cdiv(query_length, block), batch * heads)](
        query, key, value, out, lse,
        pos_key if pos_key is not None else dummy, pos_query if pos_query is not None else dummy,
        args["table"], args["positions"], args["key_mask"], args["query_mask"],
        cu_seqlens if varlen else dummy,
        seed, dropout_p, scale * _LOG2E,
        *_strides(query, varlen), *_strides(key, varlen), *_strides(value, varlen), *_strides(out, varlen),
        *_strides(lse, varlen),
        *args["rel_strides"], args["spos_b"], args["skm_b"], args["sqm_b"],
        heads, query_length, length, length,
        **_flags(pos_key, pos_query, key_mask, query_mask, layout, dropout_p, query), VARLEN=varlen,
        BLOCK_M=block, BLOCK_N=block, HEAD_DIM=head_dim, WINDOW=window, num_warps=warps, num_stages=stages)
    return out, lse, torch.tensor(seed, dtype=torch.int64)


def _forward_outputs(query: torch.Tensor, varlen: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty (output, log-sum-exp) in the layout the forward kernel writes."""
    if varlen:
        return query.new_empty(query.shape), query.new_empty(query.shape[:2], dtype=torch.float32)  # [T, H]
    batch, heads, query_length, head_dim = query.shape
    # [B, Lq, H, d] in memory, viewed as [B, H, Lq, d]: the caller's transpose back is free.
    out = query.new_empty(batch, query_length, heads, head_dim).transpose(1, 2)
    return out, query.new_empty(batch, heads, query_length, dtype=torch.float32)


@disentangled_attention_op.register_fake
def _(query, key, value, pos_key, pos_query, rel_index, key_mask, query_mask, cu_seqlens, max_seqlen, scale,
      dropout_p, seed):
    return *_forward_outputs(query, cu_seqlens is not None), torch.empty((), dtype=torch.int64)


@torch.library.custom_op("deberta::disentangled_attention_backward", mutates_args=())
def disentangled_attention_backward_op(grad_out: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                                       value: torch.Tensor, pos_key: Optional[torch.Tensor],
                                       pos_query: Optional[torch.Tensor], rel_index: Optional[torch.Tensor],
                                       out: torch.Tensor, lse: torch.Tensor, key_mask: Optional[torch.Tensor],
                                       query_mask: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
                                       seed: torch.Tensor, max_seqlen: int, scale: float, dropout_p: float,
                                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, d pos_key, d pos_query); a relative gradient is empty where that term is off."""
    varlen = cu_seqlens is not None
    batch, heads, query_length, length, head_dim = _geometry(query, key, cu_seqlens, max_seqlen)
    relative = pos_key if pos_key is not None else pos_query
    layout = _layout(rel_index, relative, length, varlen)
    block, window, warps, stages = _blocks(head_dim, query.device)
    if grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    row_delta = (grad_out.float() * out.float()).sum(-1)  # rowsum(dO * O): [B, H, Lq], varlen [T, H]
    dq, dk, dv = torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)
    # Relative gradients by distance, fp32, summed over the batch by atomic adds.
    by_distance = torch.zeros(2, heads, 2 * length - 1, head_dim, dtype=torch.float32, device=query.device)
    dummy = query.new_empty(0)
    args = _launch_args(relative, layout, key_mask, query_mask, dummy)
    flags = _flags(pos_key, pos_query, key_mask, query_mask, layout, dropout_p, query)
    pos_key_arg = pos_key if pos_key is not None else dummy
    pos_query_arg = pos_query if pos_query is not None else dummy
    seed = int(seed)  # a CPU scalar: no device synchronisation
    common = dict(BLOCK_M=block, BLOCK_N=block, HEAD_DIM=head_dim, WINDOW=window, num_warps=warps,
                  num_stages=stages, VARLEN=varlen, **flags)
    _backward_key_kernel[(triton.cdiv(length, block), batch * heads)](
        query, key, value, grad_out, lse, row_delta, dk, dv, by_distance[1], pos_key_arg, pos_query_arg,
        args["table"], args["positions"], args["inverse"], args["key_mask"], args["query_mask"],
        cu_seqlens if varlen else dummy,
        seed, dropout_p, scale, scale * _LOG2E,
        *_strides(query, varlen), *_strides(key, varlen), *_strides(value, varlen), *_strides(grad_out, varlen),
        *_strides(dk, varlen), *_strides(dv, varlen), *_strides(lse, varlen),
        *args["rel_strides"], args["spos_b"], args["sinv_b"], args["skm_b"], args["sqm_b"],
        heads, query_length, length, length, **common)
    _backward_query_kernel[(triton.cdiv(query_length, block), batch * heads)](
        query, key, value, grad_out, lse, row_delta, dq, by_distance[0], pos_key_arg, pos_query_arg,
        args["table"], args["positions"], args["key_mask"], args["query_mask"],
        cu_seqlens if varlen else dummy,
        seed, dropout_p, scale, scale * _LOG2E,
        *_strides(query, varlen), *_strides(key, varlen), *_strides(value, varlen), *_strides(grad_out, varlen),
        *_strides(dq, varlen), *_strides(lse, varlen),
        *args["rel_strides"], args["spos_b"], args["skm_b"], args["sqm_b"],
        heads, query_length, length, length, **common)
    relative_grads = []
    for tensor, grad in ((pos_key, by_distance[0]), (pos_query, by_distance[1])):
        if tensor is None:
            relative_grads.append(query.new_empty(0))  # an output of its own: outputs may not alias
            continue
        # Fold the distances onto their rows of the relative table: row f(delta) += grad[delta].
        used = layout.table >= 0
        folded = torch.zeros(tensor.shape, dtype=torch.float32, device=tensor.device)
        folded.index_add_(1, layout.table[used].long(), grad[:, used])
        relative_grads.append(folded.to(tensor.dtype))
    return dq, dk, dv, *relative_grads


@disentangled_attention_backward_op.register_fake
def _(grad_out, query, key, value, pos_key, pos_query, rel_index, out, lse, key_mask, query_mask, cu_seqlens,
      seed, max_seqlen, scale, dropout_p):
    def relative_grad(tensor):
        return query.new_empty(0) if tensor is None else torch.empty_like(tensor)

    return (torch.empty_like(query), torch.empty_like(key), torch.empty_like(value), relative_grad(pos_key),
            relative_grad(pos_query))


def _keep_for_backward(ctx, inputs, output):
    query, key, value, pos_key, pos_query, rel_index, key_mask, query_mask, cu_seqlens, max_seqlen, scale, \
        dropout_p, _ = inputs
    out, lse, seed = output
    ctx.mark_non_differentiable(lse, seed)
    ctx.save_for_backward(query, key, value, pos_key, pos_query, rel_index, out, lse, key_mask, query_mask,
                          cu_seqlens, seed)
    ctx.max_seqlen, ctx.scale, ctx.dropout_p = max_seqlen, scale, dropout_p


def _backward(ctx, grad_out, _grad_lse, _grad_seed):
    query, key, value, pos_key, pos_query, rel_index, out, lse, key_mask, query_mask, cu_seqlens, seed = \
        ctx.saved_tensors
    dq, dk, dv, dpos_key, dpos_query = disentangled_attention_backward_op(
        grad_out, query, key, value, pos_key, pos_query, rel_index, out, lse, key_mask, query_mask, cu_seqlens,
        seed, ctx.max_seqlen, ctx.scale, ctx.dropout_p)
    return (dq, dk, dv, dpos_key if pos_key is not None else None, dpos_query if pos_query is not None else None,
            *[None] * 8)


disentangled_attention_op.register_autograd(_backward, setup_context=_keep_for_backward)


def _launch_args(relative, layout, key_mask, query_mask, dummy) -> dict:
    positions = layout.positions if layout is not None and layout.positions is not None else None
    inverse = layout.inverse if layout is not None and layout.inverse is not None else None
    return dict(
        table=layout.table if layout is not None else dummy,
        positions=positions if positions is not None else dummy,
        inverse=inverse if inverse is not None else dummy,
        # A layout shared by the whole batch has one row: stride 0 repeats it.
        spos_b=positions.stride(0) if positions is not None and positions.shape[0] > 1 else 0,
        sinv_b=inverse.stride(0) if inverse is not None and inverse.shape[0] > 1 else 0,
        key_mask=key_mask if key_mask is not None else dummy,
        query_mask=query_mask if query_mask is not None else dummy,
        skm_b=key_mask.stride(0) if key_mask is not None else 0,
        sqm_b=query_mask.stride(0) if query_mask is not None else 0,
        rel_strides=(relative.stride(0), relative.stride(1)) if relative is not None else (0, 0),
    )


def _flags(pos_key, pos_query, key_mask, query_mask, layout, dropout_p, query) -> dict:
    return dict(HAS_C2P=pos_key is not None, HAS_P2C=pos_query is not None, HAS_KEY_MASK=key_mask is not None,
                HAS_QUERY_MASK=query_mask is not None,
                QUERY_POSITIONS=layout is not None and layout.positions is not None,
                DROPOUT=dropout_p > 0, PRECISION="ieee" if query.dtype == torch.float32 else "tf32")


def fused_disentangled_attention(query, key, value, pos_key, pos_query, rel_index, mask, scale,
                                 dropout_p=0.0, query_mask=None, seed=None):
    """The kernels on inputs ``deberta.kernels.triton_attention`` has checked (it falls back
    where they cannot run). ``rel_index``: the relative index, unread without relative terms.
    ``mask`` a ``Packing``: query, key and value are packed [T, H, d] and the varlen kernels
    run each sequence on its own tokens (no query mask then). ``seed``: dropout's, drawn
    from torch's generator when None."""
    def unit_stride(t):
        return t if t.stride(-1) == 1 else t.contiguous()

    query, key, value = unit_stride(query), unit_stride(key), unit_stride(value)
    pos_key = None if pos_key is None else pos_key.to(query.dtype).contiguous()
    pos_query = None if pos_query is None else pos_query.to(query.dtype).contiguous()
    cu_seqlens, max_seqlen = None, 0
    if isinstance(mask, Packing):
        cu_seqlens, max_seqlen, mask = mask.cu_seqlens.to(torch.int32).contiguous(), mask.max_seqlen, None
    key_mask = None if mask is None else mask.to(torch.int8).contiguous()
    query_mask = None if query_mask is None else query_mask.to(torch.int8).contiguous()
    out, _, _ = disentangled_attention_op(query, key, value, pos_key, pos_query, rel_index, key_mask, query_mask,
                                          cu_seqlens, max_seqlen, float(scale), float(dropout_p),
                                          -1 if seed is None else int(seed))
    return out


def dropout_keep_mask(seed: int, shape, dropout_p: float, device) -> torch.Tensor:
    """The keep mask [B, H, Lq, L] (bool) that a call with this seed draws: for tests."""
    batch, heads, query_length, length = shape
    kept = torch.empty(batch, heads, query_length, length, dtype=torch.int8, device=device)
    block = _blocks(64)[0]
    _keep_mask_kernel[(triton.cdiv(query_length, block), batch * heads)](
        kept, seed, dropout_p, heads, query_length, length, BLOCK_M=block, BLOCK_N=block)
    return kept.bool()
