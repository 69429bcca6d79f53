"""SiFT: scale-invariant finetuning, the virtual adversarial training of the DeBERTa paper,
as the official implementation does it (DeBERTa/sift/sift.py and its use in DeBERTa/apps/run.py).

The perturbation lives in the space of the *normalised* embeddings: the embedding
LayerNorm's input x is first normalised, n = (x - mean) / std, the perturbation is added
there, n + delta, and the LayerNorm normalises that sum again before its own weight and
bias. Every token vector has unit scale at that point, so one noise level suits every
model size and the LayerNorm's learnt gain cannot magnify or hide the perturbation.

Here a forward pre-hook replaces the LayerNorm's input x by ``x + std(x) * delta``: the
LayerNorm subtracts the mean and divides by the standard deviation of that, which is the
normalisation of n + delta (up to where the small epsilon enters), and then applies its
weight and bias. A zero delta leaves the input, and so the model's outputs, unchanged to
the bit. As in the official code, the perturbed passes see the embeddings detached: the
adversarial term trains the model above the embedding LayerNorm's input, and reaches the
embeddings only through the clean logits.

One training step with SiFT (the official ``AdversarialLearner.loss``):

    1. clean logits  = model(batch)                         (with the task loss)
    2. delta         ~ N(0, init_noise^2), clipped to +-2 init_noise, per input value
    3. probe         = sum over rows of D(model(batch; delta), stopgrad(clean logits))
       g             = d probe / d delta                      (no parameter gradients)
    4. delta        += step_size * g / (1e-6 + max |g|)       (per token, over the hidden size)
    5. adversarial   = mean over rows of D(model(batch; delta), clean logits)
    6. loss          = task loss + lambda * adversarial

D is the symmetric KL divergence for classification (whose gradients equal those of the
official sum of two cross entropies: the values differ by the entropies, constants to
each side's gradient), and the squared difference for a regression output. The probe is
a sum over the rows, as the official, so the 1e-6 of step 4 stays negligible next to
the gradient of a large batch; a non-finite gradient keeps the initial noise (the
official skips the ascent step then too).

Where we differ: for regression (STS-B, one output) the official final term is its
symmetric KL over a single logit, which is identically zero, so official SiFT does
nothing there; here D is the squared difference in both the probe and the final term.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn


class CountedRows(NamedTuple):
    """Per-row divergences of which only some rows count (NER: the real tokens of a padded
    batch), with a 0/1 weight per row. SiFT sums them for its probe and averages the counted
    ones for its loss by weights, so the step does not wait for the host to learn how many
    rows count, as a boolean selection would."""
    values: torch.Tensor
    counted: torch.Tensor

    def sum(self) -> torch.Tensor:
        return (self.values * self.counted).sum()

    def mean(self) -> torch.Tensor:
        return self.sum() / self.counted.sum().clamp_min(1)


# (perturbed, clean) -> one value per row, or CountedRows where only some rows count
Divergence = Callable[[torch.Tensor, torch.Tensor], Union[torch.Tensor, CountedRows]]


def symmetric_kl(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """KL(p_target || p) + KL(p || p_target) over the last dimension, per row (``reduction``
    "none") or averaged over the rows.

    Each direction treats its reference distribution as a constant, so the gradient
    reaches both logits as in the reference: d/d logits = p - p_target, and vice versa.
    """
    logits, target = logits.float().flatten(0, -2), target.float().flatten(0, -2)
    log_p, log_q = F.log_softmax(logits, -1), F.log_softmax(target, -1)
    p, q = log_p.exp(), log_q.exp()
    forward = (q.detach() * (log_q.detach() - log_p)).sum(-1)
    backward = (p.detach() * (log_p.detach() - log_q)).sum(-1)
    per_row = forward + backward
    return per_row if reduction == "none" else per_row.mean()


def squared_difference(perturbed: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """(perturbed - clean)^2 per row, summed over the outputs: SiFT's divergence for regression."""
    return (perturbed.float() - clean.float()).pow(2).flatten(1).sum(-1)


class EmbeddingPerturbation:
    """A forward pre-hook on the embedding LayerNorm: while active, its input x becomes
    ``x + std(x) * delta``, i.e. ``delta`` is added to the normalised input before the
    LayerNorm normalises again and applies its weight and bias."""

    def __init__(self, layer_norm: nn.LayerNorm, init_noise: float, step_size: float):
        self.init_noise = init_noise
        self.step_size = step_size
        self.eps = layer_norm.eps
        self.delta: Optional[torch.Tensor] = None
        self.active = False
        self._handle = layer_norm.register_forward_pre_hook(self._perturb)

    def _perturb(self, module, inputs):
        if not self.active:
            return None
        x = inputs[0].detach()  # the official perturbs a detached copy of the normalised input
        if self.delta is None:  # shape known only now: [B, L, H], or [B*C, L, H] for choices
            noise = torch.randn(x.shape, device=x.device, dtype=torch.float32) * self.init_noise
            self.delta = noise.clamp(-2 * self.init_noise, 2 * self.init_noise).requires_grad_(True)
        x32 = x.float()
        scale = torch.sqrt(x32.var(-1, unbiased=False, keepdim=True) + self.eps)  # what the LayerNorm divides by
        return (x32 + scale * self.delta).to(x.dtype), *inputs[1:]

    def ascend(self, grad: torch.Tensor) -> None:
        """One normalised ascent step; a non-finite gradient keeps the initial noise (chosen on
        the device: a Python ``if`` would make the host wait for the check)."""
        step = grad / (grad.abs().amax(-1, keepdim=True) + 1e-6)
        ascended = self.delta + self.step_size * step
        self.delta = torch.where(torch.isfinite(grad).all(), ascended, self.delta).detach()

    def remove(self) -> None:
        self._handle.remove()


class SiFT:
    """Computes the adversarial loss of one batch; ``forward()`` returns the logits of the
    batch (perturbed while the hook is active)."""

    def __init__(self, model: nn.Module, lam: float, step_size: float, init_noise: float,
                 layer_norm: Optional[nn.LayerNorm] = None):
        layer_norm = layer_norm if layer_norm is not None else model.deberta.embeddings.LayerNorm
        self.perturbation = EmbeddingPerturbation(layer_norm, init_noise, step_size)
        self.lam = lam

    def probe_gradient(self, forward: Callable[[], torch.Tensor], clean_logits: torch.Tensor,
                       divergence: Divergence) -> torch.Tensor:
        """d/d delta of the divergence summed over the rows (the official probe), at the
        current delta (the initial noise on the first call); no parameter gradients."""
        probe = divergence(forward(), clean_logits.detach()).sum()
        (grad,) = torch.autograd.grad(probe, self.perturbation.delta)
        return grad

    def loss(self, forward: Callable[[], torch.Tensor], clean_logits: torch.Tensor,
             divergence: Divergence) -> torch.Tensor:
        """lambda * the divergence averaged over the rows at the ascended delta, gradients into
        the model (and, through ``clean_logits``, into the clean pass)."""
        perturbation = self.perturbation
        perturbation.active, perturbation.delta = True, None
        try:
            perturbation.ascend(self.probe_gradient(forward, clean_logits, divergence))
            return self.lam * divergence(forward(), clean_logits).mean()
        finally:
            perturbation.active, perturbation.delta = False, None
