"""Disentangled attention kernels behind one small interface.

Every backend computes, per batch b and head h, for query i and key j:

    score[i, j] = q_i . k_j                 content -> content
                + q_i . pos_key[r(i, j)]    content -> position (c2p)
                + k_j . pos_query[r(i, j)]  position -> content (p2c)
    out_i = sum_j softmax_j(score[i, :] masked) v_j

where r(i, j) is the (bucketed, clamped) relative distance index of i to j into the
relative embedding table, and all three terms share one scale 1/sqrt(d * n_terms).

The scale is applied to q and pos_query *before* the products, never after: in fp16 an
unscaled c2p product of two 64-dim vectors can exceed 65504 on long sequences, which is
how other DeBERTa code overflows (its v2 code divides c2p/p2c after the product).

Inputs (all backends):
    query: [B, H, Lq, d]; key, value: [B, H, L, d]. Lq = L in self-attention; the enhanced
        mask decoder asks for a subset of query positions only (Lq < L).
    pos_key, pos_query: [H, 2S, d] projections of the relative embeddings, or None when
        the c2p / p2c term is off
    rel_index: [Lq, L] or, per sequence, [B, Lq, L] long: r(i, j) in [0, 2S)
    mask: [B, L] bool/int padding mask of the keys (1 = real token), or None when every
        token is real
    scale: the common 1/sqrt(d * n_terms)
    dropout_p: attention-probability dropout (0 in eval)
    query_mask: [B, Lq] padding mask of the queries, or None. As in the reference
        implementations, a padded query row attends to nothing real; it gets a uniform
        distribution over all keys (its output is never used).
Returns [B, H, Lq, d].

Packed inputs (B sequences end to end, no padding): ``mask`` is a ``Packing``, query, key
and value are [T, H, d] (the projections' [T, H*d] viewed per head), ``rel_index`` is the
self-attention index [Lmax, Lmax] of the longest sequence, ``query_mask`` is None, and the
result is [T, H, d]. Each sequence attends within itself, with relative positions counted
from its own first token. ``eager`` and ``sdpa`` compute on a padded batch
(``attend_padded``: pad, run with the mask, unpad); ``triton`` runs varlen kernels on the
packed tokens themselves. Another registered backend may do either.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Backend = Callable[..., torch.Tensor]


def relative_terms(scaled_query, key, pos_key, pos_query, rel_index, scale):
    """The c2p and p2c scores, each [B, H, Lq, L] or None; the query comes already
    multiplied by ``scale``."""
    if pos_key is None and pos_query is None:  # no relative term (relative_attention off): no index either
        return None, None
    batch, heads, query_length, _ = scaled_query.shape
    length = key.shape[-2]
    rel_index = rel_index if rel_index.dim() == 2 else rel_index.unsqueeze(1)  # [B, 1, Lq, L]
    index = rel_index.expand(batch, heads, query_length, length)
    c2p = p2c = None
    if pos_key is not None:
        # [B,H,L,d] @ [H,d,2S] -> [B,H,L,2S], then pick column r(i, j) for each key j.
        c2p = torch.matmul(scaled_query, pos_key.transpose(-1, -2).to(scaled_query.dtype))
        c2p = torch.gather(c2p, -1, index)
    if pos_query is not None:
        # k_j . pos_query[r(i, j)]: row j of k @ pos_query^T, column r(i, j); r is
        # antisymmetric in (i, j) around S, so gathering row j at r(i, j) is a transpose.
        # (A contiguous transposed index gathers and scatters much faster than a strided view.)
        p2c = torch.matmul(key, (pos_query * scale).transpose(-1, -2).to(key.dtype))
        index_t = rel_index.transpose(-1, -2).contiguous().expand(batch, heads, length, query_length)
        p2c = torch.gather(p2c, -1, index_t).transpose(-1, -2)
    return c2p, p2c


def _pair_mask(mask: torch.Tensor, query_mask) -> torch.Tensor:
    """Padding masks -> [B, 1, Lq or 1, L] bool, true where the pair may attend."""
    allowed = mask.bool()[:, None, None, :]
    return allowed if query_mask is None else allowed & query_mask.bool()[:, None, :, None]


def eager_attention(query, key, value, pos_key, pos_query, rel_index, mask, scale,
                    dropout_p: float = 0.0, query_mask=None):
    """The reference: plain PyTorch operations, easiest to read and to check."""
    if isinstance(mask, Packing):
        return attend_padded(eager_attention, query, key, value, pos_key, pos_query, rel_index, mask, scale,
                             dropout_p)
    query = query * scale
    scores = torch.matmul(query, key.transpose(-1, -2))
    # In place: no backward needs the raw scores, and each [B,H,L,L] copy costs memory.
    for term in relative_terms(query, key, pos_key, pos_query, rel_index, scale):
        if term is not None:
            scores += term
    if mask is not None:
        scores.masked_fill_(~_pair_mask(mask, query_mask), torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs, value)


def sdpa_attention(query, key, value, pos_key, pos_query, rel_index, mask, scale,
                   dropout_p: float = 0.0, query_mask=None):
    """PyTorch's fused scaled_dot_product_attention with the relative terms as its bias.

    The [B,H,L,L] probabilities and dropout mask are not kept for backward, which saves
    memory and time; the relative bias is still materialised once.
    """
    if isinstance(mask, Packing):
        return attend_padded(sdpa_attention, query, key, value, pos_key, pos_query, rel_index, mask, scale,
                             dropout_p)
    c2p, p2c = relative_terms(query * scale, key, pos_key, pos_query, rel_index, scale)
    bias = c2p if p2c is None else p2c if c2p is None else c2p.add_(p2c)
    if mask is not None:
        if bias is None:
            bias = torch.zeros((), dtype=query.dtype, device=query.device).expand(
                query.shape[0], query.shape[1], query.shape[2], key.shape[2])
        # masked_fill, not addition: min + a negative bias would round to -inf in half
        # precision, and a padded query row of all -inf would turn into NaN.
        bias = bias.masked_fill(~_pair_mask(mask, query_mask), torch.finfo(query.dtype).min)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout_p,
                                          scale=scale)


class Packing:
    """Where the tokens of a packed batch belong: B sequences laid end to end, no padding.

    Per-token work (embeddings, projections, LayerNorms, the FFN, the heads) runs on the
    packed ``[T, ...]`` tokens. Attention needs each sequence on its own, with its own
    relative positions: every backend takes the packing as its ``mask`` (see the top of
    this module). The fused kernels locate each sequence by ``cu_seqlens``; the others
    compute on a padded batch: ``pad`` scatters the tokens into ``[B, Lmax, ...]`` (Lmax the
    longest sequence of this batch, not the model's maximum), the backend runs there with
    ``mask``, and ``unpad`` gathers the real tokens back (``attend_padded``). The QA head
    pads likewise; the nGiE convolution slides along ``spaced`` tokens instead.

    ``cu_seqlens`` [B+1] int: cumulative lengths, 0 first and T last; ``max_seqlen`` the
    longest length, given as a Python int so that no step waits to read it off the device.
    """

    def __init__(self, cu_seqlens: torch.Tensor, max_seqlen: int, total_tokens: int):
        self.cu_seqlens = cu_seqlens
        self.max_seqlen = int(max_seqlen)
        self.batch = cu_seqlens.shape[0] - 1
        starts = cu_seqlens[:-1].long()
        lengths = cu_seqlens[1:].long() - starts
        # output_size: the total is known on the host, so repeat_interleave need not sync.
        sequence = torch.repeat_interleave(torch.arange(self.batch, device=cu_seqlens.device), lengths,
                                           output_size=total_tokens)
        self.sequence = sequence  # [T]: the sequence of each token
        self.starts = starts  # [B]: each sequence's first token ([CLS])
        self.positions = torch.arange(total_tokens, device=cu_seqlens.device) - starts[sequence]  # [T]
        self.slots = sequence * self.max_seqlen + self.positions  # [T]: the token's place in [B * Lmax]
        self.mask = torch.arange(self.max_seqlen, device=cu_seqlens.device) < lengths[:, None]  # [B, Lmax]

    def pad(self, tokens: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """[T, ...] -> [B, Lmax, ...], ``fill`` in the padding."""
        padded = tokens.new_full((self.batch * self.max_seqlen, *tokens.shape[1:]), fill)
        return padded.index_copy(0, self.slots, tokens).unflatten(0, (self.batch, self.max_seqlen))

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """[B, Lmax, ...] -> [T, ...]: the real tokens, in packed order."""
        return padded.flatten(0, 1).index_select(0, self.slots)

    def spaced(self, tokens: torch.Tensor, gap: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[T, ...] -> ([T + B * gap, ...] with ``gap`` zero rows after each sequence, the row of
        each token there [T]). A window reaching at most ``gap`` tokens either side of a token
        sees its own sequence and zeros, as in a zero-padded batch, at T + B * gap rows where
        padding takes B * Lmax."""
        rows = torch.arange(tokens.shape[0], device=tokens.device) + self.sequence * gap
        spaced = tokens.new_zeros((tokens.shape[0] + self.batch * gap, *tokens.shape[1:]))
        return spaced.index_copy(0, rows, tokens), rows


def attend_padded(backend: Backend, query, key, value, pos_key, pos_query, rel_index, packing: Packing, scale,
                  dropout_p: float = 0.0) -> torch.Tensor:
    """Packed [T, H, d] inputs through a backend that computes on a padded batch: each
    sequence padded to the batch's longest, the backend run with the packing's mask on
    keys and queries, and the real rows gathered back, [T, H, d]."""
    def padded(tokens):  # [T, H, d] -> [B, H, Lmax, d]
        return packing.pad(tokens).transpose(1, 2)

    context = backend(padded(query), padded(key), padded(value), pos_key, pos_query, rel_index, packing.mask,
                      scale, dropout_p=dropout_p, query_mask=packing.mask)
    return packing.unpad(context.transpose(1, 2))


ATTENTION_BACKENDS: dict[str, Backend] = {
    "eager": eager_attention,
    "sdpa": sdpa_attention,
}


def get_backend(name: str) -> Backend:
    try:
        return ATTENTION_BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; available: {sorted(ATTENTION_BACKENDS)}") from None


def register_backend(name: str, backend: Backend) -> None:
    """Make another kernel selectable by ``DebertaConfig(attention_backend=name)``; it takes
    the arguments described at the top of this module."""
    ATTENTION_BACKENDS[name] = backend


# The fused Triton kernels (deberta/kernels): Triton itself is imported on first use only.
from .kernels import triton_attention  # noqa: E402

register_backend("triton", triton_attention)
