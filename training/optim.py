"""The optimizer and its schedule, the same for pretraining and finetuning.

Weight decay falls on every matrix and never on vectors (biases, LayerNorm weights): a
1-D parameter is exactly a bias or a LayerNorm weight in every DeBERTa head (tested).
The GDES delta is a matrix and is decayed, as the authors' code decays it (their
optimizer exempts only biases and LayerNorm weights).

Adam's bias correction is a setting (``adam_bias_correction``): the authors' XAdam
(DeBERTa/optims/xadam.py) passes ``bias_correction`` 0, so its step is lr x m / (sqrt(v) +
eps) with the raw moments. torch's AdamW always corrects; without correction we use
``AdamW`` below (or DeepSpeed's CPU Adam, which has the switch, when ZeRO offloads).
"""
from __future__ import annotations

import math

import torch

from .config import OptimizerConfig


def parameter_groups(parameters, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for parameter in parameters:
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class AdamW(torch.optim.Optimizer):
    """AdamW with Adam's bias correction as a switch (torch's has none).

    Per parameter p with gradient g, at step t (from 1):
        m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
        p = p (1 - lr wd) - lr m' / (sqrt(v') + eps)
    with m' = m / (1 - beta1^t), v' = v / (1 - beta2^t) when corrected, else m' = m, v' = v:
    the update of the authors' XAdam (eps outside the root, decoupled decay lr x wd x p
    from the weights before the step). The state keys are torch's (exp_avg, exp_avg_sq,
    step). Elementwise, so ZeRO may partition it (build_engine allows it).
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0,
                 bias_correction: bool = True):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      bias_correction=bias_correction))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                m, v, grad = state["exp_avg"], state["exp_avg_sq"], p.grad
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size, denom = lr, v.sqrt()
                if group["bias_correction"]:
                    t = float(state["step"])
                    step_size = lr / (1 - beta1 ** t)
                    denom.div_(math.sqrt(1 - beta2 ** t))
                denom.add_(eps)
                if decay:
                    p.mul_(1 - lr * decay)
                p.addcdiv_(m, denom, value=-step_size)
        return loss


def build_optimizer(module: torch.nn.Module, config: OptimizerConfig, offloaded: bool,
                    on_gpu: bool) -> torch.optim.Optimizer:
    """AdamW; DeepSpeed's CPU Adam when ZeRO offloads the optimizer, fused AdamW on GPUs;
    our ``AdamW`` without bias correction (``--no_adam_bias_correction``) unless offloaded."""
    groups = parameter_groups(module.parameters(), config.weight_decay)
    betas = (config.adam_beta1, config.adam_beta2)
    if offloaded:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(groups, lr=config.lr, betas=betas, eps=config.adam_eps, adamw_mode=True,
                                bias_correction=config.adam_bias_correction)
    if not config.adam_bias_correction:
        return AdamW(groups, lr=config.lr, betas=betas, eps=config.adam_eps, bias_correction=False)
    return torch.optim.AdamW(groups, lr=config.lr, betas=betas, eps=config.adam_eps, fused=on_gpu or None)


def lr_factor(step: int, warmup: int, total_steps: int) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based): linear warm-up over
    ``warmup`` steps, then linear decay reaching 0 at ``total_steps``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def build_schedule(optimizer: torch.optim.Optimizer, warmup: int, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total_steps))
