"""Masked language modelling: ``DebertaForMaskedLM`` with its enhanced mask decoder; the loss
is the cross-entropy at the masked positions only.

Absolute positions. A DeBERTa encoder without ``position_biased_input`` sees relative
positions only; the official MLM model then always decodes through the enhanced mask
decoder (two passes through the last layer, absolute positions added to the query). So a
model config that does not set ``emd_layers`` gets those 2 layers here; an explicit
``emd_layers=0`` (``--set_model``, a JSON model config) is kept and logged."""
from __future__ import annotations

import deepspeed
import torch

from deberta import DebertaConfig, DebertaForMaskedLM

from ..metrics import forward_flops_per_token
from . import Objective, training_flops


def tie_output_to_embedding(model: DebertaForMaskedLM) -> None:
    """The MLM head reads the word embedding table in the model's own forward, outside
    the embedding module: ZeRO-3 must gather it for that forward too."""
    deepspeed.zero.register_external_parameter(model, model.deberta.embeddings.word_embeddings.weight)


EMD_LAYERS = 2  # the official MaskedLanguageModel: two passes through the last encoder layer


def with_position_decoder(config: DebertaConfig, given: frozenset, log, model: str = "the MLM model"
                          ) -> DebertaConfig:
    """``config`` with the enhanced mask decoder where it has no absolute positions otherwise
    and the user did not set ``emd_layers``; an explicit ``emd_layers=0`` is kept and logged."""
    if config.position_biased_input or config.emd_layers > 0:
        return config
    if "emd_layers" in given:
        log(f"note: {model} trains with emd_layers=0 as set: without position_biased_input it sees no "
            f"absolute positions (the official MLM decodes with {EMD_LAYERS} enhanced mask decoder layers)")
        return config
    if config.embedding_size != config.hidden_size:
        raise ValueError(f"{model} has no absolute positions (position_biased_input false, emd_layers not set) "
                         f"and cannot take the enhanced mask decoder (embedding_size {config.embedding_size} != "
                         f"hidden_size {config.hidden_size}): set position_biased_input=true, or emd_layers=0 "
                         f"to train without absolute positions")
    log(f"note: {model} has no absolute positions in its input and its config does not set emd_layers: "
        f"it trains with the enhanced mask decoder, {EMD_LAYERS} layers as the official MLM "
        f"(set emd_layers=0 to train without)")
    return config.replace(emd_layers=EMD_LAYERS)


def mlm_metrics(output) -> dict[str, torch.Tensor]:
    """Sums at the targets of a ``DebertaForMaskedLM`` output (its logits rows and their
    labels, -100 on filler rows): the loss weighted by their count, correct predictions,
    the count. Masks, not selections: nothing here waits for the device."""
    counted = output.labels != -100
    count = counted.sum()
    return {"mlm_loss_sum": output.loss.detach().double() * count, "mlm_count": count,
            "mlm_correct": ((output.logits.detach().argmax(-1) == output.labels) & counted).sum()}


def mlm_figures(totals) -> dict[str, float]:
    count = max(1.0, float(totals["mlm_count"]))
    return {"mlm_loss": float(totals["mlm_loss_sum"]) / count, "mlm_acc": float(totals["mlm_correct"]) / count}


class MaskedLanguageModeling(Objective):
    @classmethod
    def resolve_model_config(cls, options, model_config, given, log):
        return with_position_decoder(model_config, given, log)

    def __init__(self, options, model_config):
        super().__init__(options, model_config)
        self.model = DebertaForMaskedLM(model_config)
        tie_output_to_embedding(self.model)

    @classmethod
    def from_pretrained(cls, options, model_config, init_model, init_generator, weights, log):
        from ..init_weights import mlm_from_pretrained
        return mlm_from_pretrained(cls, options, model_config, init_model, init_generator, weights, log)

    def forward(self, input_ids, attention_mask, labels, original_ids=None):
        out = self.model(input_ids, attention_mask, labels=labels, max_predictions=self.max_predictions)
        return out.loss, mlm_metrics(out)

    def summarize(self, totals, training):
        figures = mlm_figures(totals)
        return {"loss": figures["mlm_loss"], **figures}

    def flops_per_token(self, seq_len, target_fraction):
        return training_flops(forward_flops_per_token(self.model_config, seq_len, target_fraction, mlm_head=True))

    def export_models(self):
        return {"": self.model}
