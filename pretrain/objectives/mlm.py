"""Masked language modelling: ``DebertaForMaskedLM`` with its enhanced mask decoder; the loss
is the cross-entropy at the masked positions only."""
from __future__ import annotations

import deepspeed
import torch

from deberta import DebertaForMaskedLM

from ..metrics import forward_flops_per_token
from . import Objective, training_flops


def tie_output_to_embedding(model: DebertaForMaskedLM) -> None:
    """The MLM head reads the word embedding table in the model's own forward, outside
    the embedding module: ZeRO-3 must gather it for that forward too."""
    deepspeed.zero.register_external_parameter(model, model.deberta.embeddings.word_embeddings.weight)


def mlm_metrics(logits: torch.Tensor, loss: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums at the targets: the loss weighted by their count, correct predictions, the count."""
    targets = labels[labels != -100]
    count = (labels != -100).sum()
    return {"mlm_loss_sum": loss.detach().double() * count, "mlm_count": count,
            "mlm_correct": (logits.detach().argmax(-1) == targets).sum()}


def mlm_figures(totals) -> dict[str, float]:
    count = max(1.0, float(totals["mlm_count"]))
    return {"mlm_loss": float(totals["mlm_loss_sum"]) / count, "mlm_acc": float(totals["mlm_correct"]) / count}


class MaskedLanguageModeling(Objective):
    def __init__(self, options, model_config):
        super().__init__(options, model_config)
        self.model = DebertaForMaskedLM(model_config)
        tie_output_to_embedding(self.model)

    def forward(self, input_ids, attention_mask, labels, original_ids=None):
        out = self.model(input_ids, attention_mask, labels=labels)
        return out.loss, mlm_metrics(out.logits, out.loss, labels)

    def summarize(self, totals, training):
        figures = mlm_figures(totals)
        return {"loss": figures["mlm_loss"], **figures}

    def flops_per_token(self, seq_len, target_fraction):
        return training_flops(forward_flops_per_token(self.model_config, seq_len, target_fraction, mlm_head=True))

    def export_models(self):
        return {"": self.model}
