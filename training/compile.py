"""``--compile``: every encoder layer through ``torch.compile``, the rest of the step eager.

Why layers, not the whole model: every layer runs the same code on inputs of the same
shapes, and PyTorch passes a module's parameters into the graph as inputs, so one graph
serves all N layers: it is built once, in the same time for 2 layers as for 48. The
layers hold nearly all the work (projections, disentangled attention, FFN, LayerNorms);
what stays eager is cheap next to them or needs the host anyway: embedding lookups, the
relative-position table (built once), heads, losses and metrics, DeepSpeed's hooks. The
enhanced mask decoder's passes go through the same compiled last layer. The fused Triton
attention (``attention_backend="triton"``) is one custom operator inside that graph.

Shapes: a graph is specialised to its input shapes, and a second shape makes PyTorch
build a graph with a symbolic one. Pretraining keeps every shape fixed (packed sequences,
``max_preds_per_seq`` MLM outputs per sequence); finetuning pads each batch to its
longest sequence and so runs the symbolic-length graph after the first change.

ZeRO-3: DeepSpeed gathers partitioned parameters in forward hooks on every submodule.
Inside a compiled forward those hooks would break the graph at every Linear (DeepSpeed
marks them ``torch.compiler.disable``), and tracing them fails. So under ZeRO-3 each
compiled layer becomes a *leaf module* for DeepSpeed: one hook on the layer gathers all
its parameters, outside the compiled forward, and nothing inside it has a hook. DeepSpeed
reduces a leaf module's gradients in its backward hook, once per call, so a layer called
twice in one forward cannot be a leaf: the last layer of a model with the enhanced mask
decoder (which passes through it again) stays eager under ZeRO-3, with DeepSpeed's
per-submodule hooks as without ``--compile``.
"""
from __future__ import annotations

import torch
from torch import nn

from deberta.model import DebertaForMaskedLM, DebertaLayer


def check_backend(backend) -> None:
    """A clear error for a backend name ``torch.compile`` does not know (a callable backend,
    as tests pass, is taken as it is)."""
    import torch._dynamo

    if not isinstance(backend, str):
        return
    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ValueError(f"compile_backend={backend!r} is not a torch.compile backend; available: {sorted(known)}")


def compile_encoder_layers(module: nn.Module, backend="inductor", mode: str = "default",
                           zero3: bool = False) -> int:
    """Replace the forward of every ``DebertaLayer`` in ``module`` by its compiled version
    (weights and state dict unchanged); returns how many. Call it before the DeepSpeed
    engine is built: under ZeRO-3 the layers must be leaf modules when its hooks go in,
    and a layer the enhanced mask decoder calls again is left eager (see above)."""
    check_backend(backend)
    called_again = {id(m.deberta.encoder.layer[-1]) for m in module.modules()
                    if isinstance(m, DebertaForMaskedLM) and m.config.emd_layers > 0} if zero3 else set()
    layers = [m for m in module.modules() if isinstance(m, DebertaLayer) and id(m) not in called_again]
    options = {"backend": backend}
    if mode != "default":
        options["mode"] = mode
    for layer in layers:
        if getattr(layer, "compiled", False):
            continue
        # The bound forward, not the module: the module's own hooks (ZeRO-3's gather) stay
        # outside the graph, and parameter names do not change.
        layer.forward = torch.compile(layer.forward, **options)
        layer.compiled = True
        if zero3:
            from deepspeed.utils import set_z3_leaf_module
            set_z3_leaf_module(layer, True)
    return len(layers)
