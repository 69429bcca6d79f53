"""The DeepSpeed side: one resolved DeepSpeed config, the optimizer, the schedule, the engine.

Batch sizes. Global batch = micro x accumulation x ranks, e.g. 2048 = 8 x 1 x 256 for
the 1.5B model on 16 DGX-2 nodes. Flags (--global_batch_size, --micro_batch_size,
--grad_accum) come first, then the DeepSpeed config's train_batch_size,
train_micro_batch_size_per_gpu and gradient_accumulation_steps; any two determine the
third; values given explicitly that do not multiply out are an error naming them.

Precision. --precision overrides the config's fp16/bf16 sections; "auto" keeps the
config's choice, else picks bf16 on GPUs that support it, fp16 on older ones, fp32 on CPU.
fp16 uses dynamic loss scaling: an overflowed step is skipped and the scale lowered.

The optimizer and schedule are built here from the flags (AdamW; warmup then linear
decay), so the DeepSpeed config must not carry "optimizer" or "scheduler" sections.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator

from .config import CheckpointConfig, OptimizerConfig, RunConfig

FP16_DEFAULTS = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                 "hysteresis": 2, "min_loss_scale": 1}


class ConfigError(ValueError):
    """Settings that contradict each other."""


def on_gpu() -> bool:
    return get_accelerator().device_name() == "cuda"


def load_ds_config(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--ds_config {path}: file not found (see ds_configs/)") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"--ds_config {path}: not valid JSON ({error})") from None


def resolve_batch(ds: dict, run: RunConfig, world: int) -> tuple[int, int, int]:
    """(global, micro, accumulation) with global == micro * accumulation * world."""
    given = {  # name -> (value, where it came from)
        "global": (run.global_batch_size, "--global_batch_size"),
        "micro": (run.micro_batch_size, "--micro_batch_size"),
        "accum": (run.grad_accum, "--grad_accum"),
    }
    given = {k: v for k, v in given.items() if v[0]}
    from_config = {"micro": "train_micro_batch_size_per_gpu", "accum": "gradient_accumulation_steps",
                   "global": "train_batch_size"}
    for name, key in from_config.items():  # fill from the config until two are known
        if len(given) >= 2:
            break
        if name not in given and ds.get(key):
            given[name] = (int(ds[key]), f"{key} in the DeepSpeed config")
    described = ", ".join(f"{where}={value}" for value, where in given.values())
    if "micro" not in given and not ("global" in given and "accum" in given):
        raise ConfigError(f"cannot tell the micro-batch size from {described or 'nothing'}: set "
                          f"--micro_batch_size or train_micro_batch_size_per_gpu")
    micro = given.get("micro", (0,))[0]
    accum = given.get("accum", (0,))[0]
    total = given.get("global", (0,))[0]
    if total and micro and accum and total != micro * accum * world:
        raise ConfigError(f"batch sizes do not multiply out: {described}, but micro {micro} x accumulation "
                          f"{accum} x {world} ranks = {micro * accum * world}")
    if total and micro and not accum:
        accum, rest = divmod(total, micro * world)
        if rest or not accum:
            raise ConfigError(f"global batch {total} is not a multiple of micro {micro} x {world} ranks "
                              f"= {micro * world} ({described})")
    elif total and accum and not micro:
        micro, rest = divmod(total, accum * world)
        if rest or not micro:
            raise ConfigError(f"global batch {total} is not a multiple of accumulation {accum} x {world} ranks "
                              f"({described})")
    accum = accum or 1
    total = micro * accum * world
    configured = ds.get("train_batch_size")
    if configured and configured != total and "global" not in given:
        raise ConfigError(f"batch sizes do not multiply out: train_batch_size in the DeepSpeed config={configured}, "
                          f"but micro {micro} x accumulation {accum} x {world} ranks = {total} ({described})")
    return total, micro, accum


def resolve_precision(ds: dict, run: RunConfig) -> str:
    configured = "fp16" if ds.get("fp16", {}).get("enabled") else "bf16" if ds.get("bf16", {}).get("enabled") \
        else None
    precision = run.precision
    if precision == "auto":
        if configured:
            precision = configured
        elif on_gpu():
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    if precision == "fp16" and not on_gpu():
        raise ConfigError("fp16 needs a GPU: DeepSpeed's CPU accelerator has no fp16 "
                          "(use --precision bf16 or fp32, or a ds_configs/*_bf16.json)")
    return precision


def resolve_ds_config(path: str, run: RunConfig, optimizer: OptimizerConfig, checkpoint: CheckpointConfig,
                      world: int) -> dict:
    ds = copy.deepcopy(load_ds_config(path))
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise ConfigError(f"--ds_config {path}: remove the {section!r} section; the optimizer and the "
                              f"learning-rate schedule come from the flags (--lr, --warmup_steps, ...)")
    total, micro, accum = resolve_batch(ds, run, world)
    ds.update(train_batch_size=total, train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accum)
    precision = resolve_precision(ds, run)
    ds["fp16"] = {**FP16_DEFAULTS, **ds.get("fp16", {}), "enabled": True} if precision == "fp16" else \
        {"enabled": False}
    ds["bf16"] = {"enabled": precision == "bf16"}
    if run.zero_stage >= 0:
        ds.setdefault("zero_optimization", {})["stage"] = run.zero_stage
    ds["gradient_clipping"] = optimizer.clip_grad
    ds.setdefault("steps_per_print", 10 ** 9)  # our own progress line replaces DeepSpeed's
    if checkpoint.universal_checkpoint:
        ds.setdefault("checkpoint", {})["load_universal"] = True
    return ds


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(ds: dict) -> bool:
    return ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") in ("cpu", "nvme")


def build_optimizer(model: torch.nn.Module, config: OptimizerConfig, ds: dict) -> torch.optim.Optimizer:
    """AdamW; no weight decay on vectors (biases, LayerNorm weights). DeepSpeed's CPU Adam
    when the optimizer is offloaded, fused AdamW on GPU."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    betas = (config.adam_beta1, config.adam_beta2)
    if offloads_optimizer(ds):
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(groups, lr=config.lr, betas=betas, eps=config.adam_eps, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=config.lr, betas=betas, eps=config.adam_eps, fused=on_gpu() or None)


def lr_factor(step: int, warmup: int, max_steps: int) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based): linear warmup over
    ``warmup`` steps, then linear decay reaching 0 at ``max_steps``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (max_steps - step) / max(1, max_steps - warmup))


def build_engine(model: torch.nn.Module, ds: dict, optimizer_config: OptimizerConfig, max_steps: int):
    optimizer = build_optimizer(model, optimizer_config, ds)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, optimizer_config.warmup_steps, max_steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds)
    return engine


def write_resolved_config(ds: dict, path: Path) -> None:
    path.write_text(json.dumps(ds, indent=1) + "\n", encoding="utf-8")
