"""The optimizer and its schedule, the same for pretraining and finetuning.

Weight decay falls on every matrix and never on vectors (biases, LayerNorm weights): a
1-D parameter is exactly a bias or a LayerNorm weight in every DeBERTa head (tested).
The GDES delta is a matrix and is decayed, as the authors' code decays it (their
optimizer exempts only biases and LayerNorm weights).
"""
from __future__ import annotations

import torch

from .config import OptimizerConfig


def parameter_groups(parameters, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for parameter in parameters:
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(module: torch.nn.Module, config: OptimizerConfig, offloaded: bool,
                    on_gpu: bool) -> torch.optim.Optimizer:
    """AdamW; DeepSpeed's CPU Adam when ZeRO offloads the optimizer, fused AdamW on GPUs."""
    groups = parameter_groups(module.parameters(), config.weight_decay)
    betas = (config.adam_beta1, config.adam_beta2)
    if offloaded:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(groups, lr=config.lr, betas=betas, eps=config.adam_eps, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=config.lr, betas=betas, eps=config.adam_eps, fused=on_gpu or None)


def lr_factor(step: int, warmup: int, total_steps: int) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based): linear warm-up over
    ``warmup`` steps, then linear decay reaching 0 at ``total_steps``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def build_schedule(optimizer: torch.optim.Optimizer, warmup: int, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total_steps))
