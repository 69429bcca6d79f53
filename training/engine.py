"""The DeepSpeed engine for a module: every training run goes through it, one device included.

    ds = resolve_ds_config(engine_config, optimizer_config, world)
    engine = build_engine(module, ds, optimizer_config, total_steps, engine_config)   # --compile from it
    loss = engine(**batch); engine.backward(loss); engine.step()   # updates at the accumulation boundary
    release_engine(engine)                                          # when the run ends
"""
from __future__ import annotations

import contextlib
from typing import Optional

import deepspeed
import torch

from .compile import compile_encoder_layers
from .config import EngineConfig, OptimizerConfig
from .distributed import on_gpu
from .ds_config import offloads_optimizer, zero_stage
from .optim import AdamW, build_optimizer, build_schedule


def build_engine(module: torch.nn.Module, ds: dict, optimizer: OptimizerConfig, total_steps: int,
                 engine_config: Optional[EngineConfig] = None):
    """``engine_config.compile``: the module's encoder layers compiled (``training.compile``)."""
    if engine_config is not None and engine_config.compile:
        compile_encoder_layers(module, engine_config.compile_backend, engine_config.compile_mode,
                               zero3=zero_stage(ds) == 3)
    torch_optimizer = build_optimizer(module, optimizer, offloads_optimizer(ds), on_gpu())
    if isinstance(torch_optimizer, AdamW):  # ours (no bias correction): elementwise, so ZeRO may partition it
        ds = {**ds, "zero_allow_untested_optimizer": True}
    schedule = build_schedule(torch_optimizer, optimizer.warmup(total_steps), total_steps)
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=torch_optimizer, lr_scheduler=schedule, config=ds)
    return engine


def release_engine(engine) -> None:
    """Let the engine go. ZeRO's gradient hooks hang the optimizer on the parameters' autograd
    nodes, a cycle through C++ that the collector cannot break: without removing them, an
    engine, its optimizer state and the process groups it holds live until the interpreter
    exits, where gloo's threads are torn down in no set order (now and then the rank then
    aborts with "terminate called without an active exception" after a successful run)."""
    engine.destroy()


def gathered_parameters(engine):
    """ZeRO-3 keeps shards: gather the full weights (on every rank) to read or save them."""
    if engine.zero_optimization_stage() != 3:
        return contextlib.nullcontext()
    return deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None)


def loss_scale(engine):
    """fp16's dynamic loss scale (None in fp32/bf16)."""
    return float(engine.optimizer.cur_scale) if engine.fp16_enabled() else None


def parameter_count(module: torch.nn.Module) -> int:
    # ZeRO-3 leaves each rank a shard; ds_numel is the full size.
    return sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters())
