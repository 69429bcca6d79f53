"""SiFT: scale-invariant finetuning, the virtual adversarial training of the DeBERTa paper.

The perturbation is added to the *normalised* word embeddings (the output of the
embedding LayerNorm), where every token vector has a comparable scale, so one noise
level suits every model size. One training step with SiFT:

    1. clean logits  = model(batch)
    2. delta         ~ N(0, init_noise^2), clipped to +-2 init_noise
    3. g             = d SymKL(model(batch; +delta), stopgrad(clean logits)) / d delta
                       (no parameter gradients are formed: only delta's)
    4. delta        += step_size * g / max|g| (per token, over the hidden dimension)
    5. adversarial   = SymKL(model(batch; +delta), clean logits)
    6. loss          = task loss + lambda * adversarial

The step normalisation and the symmetric KL's gradient follow the official implementation
(DeBERTa/sift/sift.py); there the perturbed input is re-normalised by the same LayerNorm,
here the perturbation is added after it, which differs only by the LayerNorm's gain.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn


def symmetric_kl(logits: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """KL(p_target || p) + KL(p || p_target) over the last dimension, averaged over rows.

    Each direction treats its reference distribution as a constant, so the gradient
    reaches both logits as in the reference: d/d logits = p - p_target, and vice versa.
    ``mask`` (the leading shape) selects the rows that count.
    """
    logits, target = logits.float().flatten(0, -2), target.float().flatten(0, -2)
    log_p, log_q = F.log_softmax(logits, -1), F.log_softmax(target, -1)
    p, q = log_p.exp(), log_q.exp()
    forward = (q.detach() * (log_q.detach() - log_p)).sum(-1)
    backward = (p.detach() * (log_p.detach() - log_q)).sum(-1)
    per_row = forward + backward
    if mask is None:
        return per_row.mean()
    mask = mask.flatten().to(per_row.dtype)
    return (per_row * mask).sum() / mask.sum().clamp(min=1.0)


class EmbeddingPerturbation:
    """A forward hook on the embedding LayerNorm that adds ``delta`` while active."""

    def __init__(self, layer_norm: nn.Module, init_noise: float, step_size: float):
        self.init_noise = init_noise
        self.step_size = step_size
        self.delta: Optional[torch.Tensor] = None
        self.active = False
        self._handle = layer_norm.register_forward_hook(self._add_delta)

    def _add_delta(self, module, inputs, output):
        if not self.active:
            return None
        if self.delta is None:  # shape known only now: [B, L, H], or [B*C, L, H] for choices
            noise = torch.randn(output.shape, device=output.device, dtype=torch.float32) * self.init_noise
            self.delta = noise.clamp(-2 * self.init_noise, 2 * self.init_noise).requires_grad_(True)
        return output + self.delta.to(output.dtype)

    def ascend(self, grad: torch.Tensor) -> None:
        """One normalised ascent step; a non-finite gradient keeps the initial noise."""
        if not torch.isfinite(grad).all():
            return
        step = grad / (grad.abs().amax(-1, keepdim=True) + 1e-6)
        self.delta = (self.delta + self.step_size * step).detach()

    def remove(self) -> None:
        self._handle.remove()


class SiFT:
    """Computes the adversarial loss of one batch; ``forward(batch)`` returns logits."""

    def __init__(self, model: nn.Module, lam: float, step_size: float, init_noise: float):
        layer_norm = model.deberta.embeddings.LayerNorm
        self.perturbation = EmbeddingPerturbation(layer_norm, init_noise, step_size)
        self.lam = lam

    def loss(self, forward: Callable[[], torch.Tensor], clean_logits: torch.Tensor,
             divergence: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """lambda * divergence(perturbed logits, clean logits), gradients into the model."""
        perturbation = self.perturbation
        perturbation.active, perturbation.delta = True, None
        try:
            probe = divergence(forward(), clean_logits.detach())
            (grad,) = torch.autograd.grad(probe, perturbation.delta)
            perturbation.ascend(grad)
            return self.lam * divergence(forward(), clean_logits)
        finally:
            perturbation.active, perturbation.delta = False, None
