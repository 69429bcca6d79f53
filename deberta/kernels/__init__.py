"""Fused attention kernels: ``attention_backend="triton"``.

``triton_attention`` takes the arguments of every backend in ``deberta.attention`` and runs
the Triton kernels of ``disentangled_attention`` where they can run: CUDA tensors on an
Ampere or newer GPU, or CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1`` set
before the kernels are first used, as the tests do). Elsewhere it computes the same thing
with the ``sdpa`` backend and logs once why.

Nothing here imports Triton until the first call, so that ``deberta`` imports without it.
"""
from __future__ import annotations

import importlib.util
import logging

import torch

log = logging.getLogger(__name__)

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SUPPORTED_HEAD_SIZES = (16, 32, 64, 128)
_logged_reasons: set[str] = set()


def _kernels():
    """The kernel module, or None where Triton is not installed."""
    if importlib.util.find_spec("triton") is None:
        return None
    from . import disentangled_attention
    return disentangled_attention


def unsupported_reason(query, key, query_length: int | None = None, length: int | None = None) -> str | None:
    """Why the fused kernels cannot take these inputs, or None when they can. The lengths
    default to the padded inputs' (dim -2); packed inputs give their longest sequence."""
    query_length = query.shape[-2] if query_length is None else query_length
    length = key.shape[-2] if length is None else length
    kernels = _kernels()
    if kernels is None:
        return "Triton is not installed (pip install triton)"
    if query.is_cuda:
        if kernels.INTERPRETED:
            return "the kernels were built for Triton's interpreter (TRITON_INTERPRET=1) but the tensors are on CUDA"
        major, minor = torch.cuda.get_device_capability(query.device)
        if major < 8:
            return (f"compute capability {major}.{minor} (V100-class GPUs): the kernels need Ampere (8.0) "
                    "or newer")
    elif not kernels.INTERPRETED:
        return ("CPU tensors: the kernels run on CPU only in Triton's interpreter, with TRITON_INTERPRET=1 "
                "set before their first use")
    if query.dtype not in SUPPORTED_DTYPES:
        return f"dtype {query.dtype} (supported: fp32, fp16, bf16)"
    if key.dtype != query.dtype:
        return f"query in {query.dtype} but key in {key.dtype}"
    if query.shape[-1] not in SUPPORTED_HEAD_SIZES:
        return f"head size {query.shape[-1]} (supported: {', '.join(map(str, SUPPORTED_HEAD_SIZES))})"
    if length * max(query_length, length) >= 2 ** 31:
        return f"sequence length {length}: the dropout counters are 32-bit"
    return None


def _fall_back(reason: str, *args, **kwargs):
    if reason not in _logged_reasons:
        _logged_reasons.add(reason)
        log.warning("attention_backend='triton' runs 'sdpa' instead: %s", reason)
    from ..attention import sdpa_attention
    return sdpa_attention(*args, **kwargs)


def triton_attention(query, key, value, pos_key, pos_query, rel_index, mask, scale,
                     dropout_p: float = 0.0, query_mask=None):
    """The backend: fused Triton kernels, or ``sdpa`` where they cannot run (logged once).
    Packed inputs (``mask`` a ``Packing``) run the varlen kernels, with no padding."""
    from ..attention import Packing

    args = (query, key, value, pos_key, pos_query, rel_index, mask, scale)
    packing = mask if isinstance(mask, Packing) else None
    query_length, length = ((packing.max_seqlen,) * 2 if packing is not None
                            else (query.shape[-2], key.shape[-2]))
    reason = unsupported_reason(query, key, query_length, length)
    relative = pos_key if pos_key is not None else pos_query
    # Whether the index is a function of distance is read off the device: eager layers check
    # (once per index, cached) and fall back; a compiled layer cannot, and leaves it to the
    # kernels' operator, which refuses such an index (DeBERTa's own indexes all are).
    if reason is None and relative is not None and not torch.compiler.is_compiling():
        from .disentangled_attention import kernel_layout
        _, reason = kernel_layout(rel_index, relative, length, packing is not None)
    if reason is not None:
        return _fall_back(reason, *args, dropout_p=dropout_p, query_mask=query_mask)
    from .disentangled_attention import fused_disentangled_attention
    return fused_disentangled_attention(query, key, value, pos_key, pos_query, rel_index, mask, scale,
                                        dropout_p=dropout_p, query_mask=query_mask)
