"""A third pretraining objective, defined outside the package, for the plugin test:
masked language modelling read straight from the last encoder layer (no enhanced mask
decoder), with optional label smoothing as its one flag.

    deepspeed pretrain/main.py --objective plain_mlm_objective:PlainMaskedLM --label_smoothing 0.1 ...
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from deberta import DebertaForMaskedLM
from deberta.cli import option
from pretrain.metrics import forward_flops_per_token
from pretrain.objectives import Objective, training_flops


@dataclass
class PlainOptions:
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy at the targets")

    def __post_init__(self):
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={self.label_smoothing} must be in [0, 1)")


class PlainMaskedLM(Objective):
    Options = PlainOptions

    def __init__(self, options, model_config):
        super().__init__(options, model_config.replace(emd_layers=0))
        self.model = DebertaForMaskedLM(self.model_config)

    def forward(self, input_ids, attention_mask, labels, original_ids=None):
        return self.loss_and_metrics(self.model, input_ids, attention_mask, labels)

    def loss_and_metrics(self, model, input_ids, attention_mask, labels):
        logits = model(input_ids, attention_mask, labels=labels).logits  # at the targets only
        targets = labels[labels != -100]
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.options.label_smoothing)
        count = (labels != -100).sum()
        return loss, {"target_loss_sum": loss.detach().double() * count, "targets": count,
                      "hits": (logits.detach().argmax(-1) == targets).sum()}

    def summarize(self, totals, training):
        count = max(1.0, float(totals["targets"]))
        return {"loss": float(totals["target_loss_sum"]) / count, "accuracy": float(totals["hits"]) / count}

    def flops_per_token(self, seq_len, target_fraction):
        return training_flops(forward_flops_per_token(self.model_config, seq_len, target_fraction, mlm_head=True))

    def export_models(self):
        return {"": self.model}


class PlainMaskedLMOwnEngine(PlainMaskedLM):
    """The same objective with its optimizer on the sub-module ``model`` rather than on the
    objective: the engine named "model" lives in its own checkpoint sub-folder, the way an
    objective with several optimizers keeps one engine per model."""

    def engine_modules(self):
        return {"model": self.model}

    def _metrics(self, engine, batch):
        return self.loss_and_metrics(engine, batch["input_ids"], batch["attention_mask"], batch["labels"])

    def train_step(self, micro_batches, engines, agreement):
        engine = engines["model"]
        for index, batch in enumerate(micro_batches):
            loss, metrics = self._metrics(engine, batch)
            engine.backward(loss)
            agreement.record({"loss": loss.detach(), **metrics})
            if index == len(micro_batches) - 1:
                agreement.agree()
            engine.step()

    def eval_batch(self, batch, engines):
        return self._metrics(engines["model"], batch)[1]
