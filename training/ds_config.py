"""The DeepSpeed JSON resolved against the flags, for pretraining and finetuning alike.

Flags (and the config file) win over the JSON; the JSON wins over the defaults. A field
is "unset" when it holds 0, -1, None or "auto" (the value Hugging Face's DeepSpeed configs
use for "take it from the trainer"), in the flags and in the JSON.

Batch sizes. Global batch = micro x accumulation x ranks. Any two determine the third;
values given explicitly that do not multiply out are an error naming where each came from.

Precision. "auto" keeps the JSON's choice, else picks bf16 on GPUs that support it, fp16
on older ones, fp32 on CPU. fp16 uses dynamic loss scaling: an overflowed step is skipped
and the scale lowered.

The optimizer and schedule come from the flags (``training.optim``), so the JSON must
not carry "optimizer" or "scheduler" sections.
"""
from __future__ import annotations

import copy
import json
from typing import Optional

from deberta.errors import SettingsError

from .config import EngineConfig, OptimizerConfig
from .distributed import on_gpu

FP16_DEFAULTS = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                 "hysteresis": 2, "min_loss_scale": 1}
DEFAULT_CLIP_GRAD = 1.0


class ConfigError(SettingsError, ValueError):
    """Settings that contradict each other."""


def load_ds_config(path: Optional[str]) -> dict:
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--ds_config {path}: file not found (see ds_configs/)") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"--ds_config {path}: not valid JSON ({error})") from None


def _set(value):
    """The value, or None where it means "unset"."""
    return None if value in (None, "auto", 0, -1) else value


def resolve_batch(ds: dict, engine: EngineConfig, world: int, default_micro: int = 0) -> tuple[int, int, int]:
    """(global, micro, accumulation) with global == micro * accumulation * world."""
    given = {  # name -> (value, where it came from)
        "global": (engine.global_batch_size, "--global_batch_size"),
        "micro": (engine.micro_batch_size, "--micro_batch_size"),
        "accum": (engine.grad_accum, "--grad_accum"),
    }
    given = {k: v for k, v in given.items() if v[0]}
    from_config = {"micro": "train_micro_batch_size_per_gpu", "accum": "gradient_accumulation_steps",
                   "global": "train_batch_size"}
    for name, key in from_config.items():  # fill from the config until two are known
        if len(given) >= 2:
            break
        if name not in given and _set(ds.get(key)):
            given[name] = (int(ds[key]), f"{key} in the DeepSpeed config")
    if "micro" not in given and not ("global" in given and "accum" in given) and default_micro:
        given["micro"] = (default_micro, "the default micro-batch size")
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
    configured = _set(ds.get("train_batch_size"))
    if configured and configured != total and "global" not in given:
        raise ConfigError(f"batch sizes do not multiply out: train_batch_size in the DeepSpeed config={configured}, "
                          f"but micro {micro} x accumulation {accum} x {world} ranks = {total} ({described})")
    return total, micro, accum


def resolve_precision(ds: dict, engine: EngineConfig) -> str:
    def enabled(section):
        return ds.get(section, {}).get("enabled") is True

    precision = engine.precision
    if precision == "auto":
        if enabled("fp16") or enabled("bf16"):
            precision = "fp16" if enabled("fp16") else "bf16"
        elif on_gpu():
            import torch
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    if precision == "fp16" and not on_gpu():
        raise ConfigError("fp16 needs a GPU: DeepSpeed's CPU accelerator has no fp16 "
                          "(use --precision bf16 or fp32, or a ds_configs/*_bf16.json)")
    return precision


def resolve_ds_config(engine: EngineConfig, optimizer: OptimizerConfig, world: int, default_micro: int = 0,
                      load_universal: bool = False) -> dict:
    """The complete DeepSpeed config of a run (written to OUTPUT/ds_config.resolved.json)."""
    ds = copy.deepcopy(load_ds_config(engine.ds_config))
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise ConfigError(f"--ds_config {engine.ds_config}: remove the {section!r} section; the optimizer and "
                              f"the learning-rate schedule come from the flags (--lr, --warmup_steps, ...)")
    total, micro, accum = resolve_batch(ds, engine, world, default_micro)
    ds.update(train_batch_size=total, train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accum)
    precision = resolve_precision(ds, engine)
    ds["fp16"] = {**FP16_DEFAULTS, **ds.get("fp16", {}), "enabled": True} if precision == "fp16" else \
        {"enabled": False}
    ds["bf16"] = {"enabled": precision == "bf16"}
    if engine.zero_stage >= 0:
        ds.setdefault("zero_optimization", {})["stage"] = engine.zero_stage
    clip = optimizer.clip_grad
    if clip is None:
        clip = ds.get("gradient_clipping", "auto")
        clip = DEFAULT_CLIP_GRAD if clip == "auto" else clip
    ds["gradient_clipping"] = clip
    ds.setdefault("steps_per_print", 10 ** 9)  # our own progress line replaces DeepSpeed's
    if load_universal:
        ds.setdefault("checkpoint", {})["load_universal"] = True
    return ds


def precision_of(ds: dict) -> str:
    return "fp16" if ds["fp16"]["enabled"] else "bf16" if ds["bf16"]["enabled"] else "fp32"


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(ds: dict) -> bool:
    return ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") in ("cpu", "nvme")
