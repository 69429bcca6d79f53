"""The pretraining objectives as modules that DeepSpeed wraps: MLM and RTD (v3).

MLM: ``DebertaForMaskedLM`` with its enhanced mask decoder; the loss is the cross-entropy
at the masked positions only.

RTD (ELECTRA-style, DeBERTa-v3): a generator (an MLM model, by default the
discriminator's shape at half its depth) predicts the masked tokens; a token is sampled
from its softmax at each masked position; the discriminator sees the original sequence
with those samples in place and classifies every real token as replaced or original (a
sample equal to the original counts as original).

    loss = generator MLM loss + rtd_lambda x discriminator BCE      (lambda = 50 in v3)

Embedding sharing between the two (``embedding_sharing``):
  gdes   the discriminator's word embedding = stop_gradient(generator's) + delta, delta
         initialised to zero: the discriminator's loss moves only delta, the generator's
         only the shared table (gradient-disentangled embedding sharing, v3's default)
  shared one table, trained by both losses (ELECTRA)
  none   two independent tables
"""
from __future__ import annotations

from dataclasses import dataclass

import deepspeed
import torch
import torch.nn.functional as F
from torch import nn

from deberta import DebertaConfig, DebertaForMaskedLM, DebertaForReplacedTokenDetection

OBJECTIVES = ("mlm", "rtd")
SHARING = ("gdes", "shared", "none")
GDES_DELTA = "discriminator.deberta.embeddings.word_embeddings.delta"


@dataclass
class ObjectiveConfig:
    objective: str = "mlm"
    rtd_lambda: float = 50.0  # weight of the discriminator loss
    embedding_sharing: str = "gdes"
    generator_config: str = ""  # preset name or JSON file; "": discriminator at half depth
    sampling_temperature: float = 1.0  # of the generator's softmax when sampling replacements

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective={self.objective!r}; allowed: {OBJECTIVES}")
        if self.embedding_sharing not in SHARING:
            raise ValueError(f"embedding_sharing={self.embedding_sharing!r}; allowed: {SHARING}")
        if self.rtd_lambda <= 0 or self.sampling_temperature <= 0:
            raise ValueError(f"rtd_lambda={self.rtd_lambda} and sampling_temperature="
                             f"{self.sampling_temperature} must be > 0")


def tie_output_to_embedding(model: DebertaForMaskedLM) -> None:
    """The MLM head reads the word embedding table in the model's own forward, outside
    the embedding module: ZeRO-3 must gather it for that forward too."""
    deepspeed.zero.register_external_parameter(model, model.deberta.embeddings.word_embeddings.weight)


class SharedWordEmbedding(nn.Module):
    """The discriminator's word embedding, read from the generator's table.

    With ``gdes`` the lookup is into stop_gradient(source) + delta. The source is not a
    submodule (its weight belongs to the generator and appears once in the state dict).
    """

    def __init__(self, source: nn.Embedding, gdes: bool):
        super().__init__()
        self._source = (source,)  # a tuple hides it from module registration
        self.padding_idx = source.padding_idx
        self.delta = nn.Parameter(torch.zeros_like(source.weight)) if gdes else None
        deepspeed.zero.register_external_parameter(self, source.weight)

    @property
    def weight(self) -> torch.Tensor:
        """The effective table (used when folding the delta at conversion)."""
        source = self._source[0].weight
        return source.detach() + self.delta if self.delta is not None else source

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight, self.padding_idx)


class MLMObjective(nn.Module):
    def __init__(self, config: DebertaConfig):
        super().__init__()
        self.model = DebertaForMaskedLM(config)
        tie_output_to_embedding(self.model)

    def forward(self, input_ids, attention_mask, labels, original_ids=None):
        out = self.model(input_ids, attention_mask, labels=labels)
        targets = labels[labels != -100]
        correct = (out.logits.detach().argmax(-1) == targets).sum()
        return out.loss, {"mlm_loss": out.loss.detach(), "mlm_correct": correct, "mlm_count": targets.numel()}


class RTDObjective(nn.Module):
    def __init__(self, discriminator: DebertaConfig, generator: DebertaConfig, config: ObjectiveConfig):
        super().__init__()
        if config.embedding_sharing != "none":
            for name in ("vocab_size", "embedding_size", "pad_token_id"):
                if getattr(generator, name) != getattr(discriminator, name):
                    raise ValueError(f"embedding sharing needs the same {name} in generator "
                                     f"({getattr(generator, name)}) and discriminator ({getattr(discriminator, name)})")
        self.config = config
        self.generator = DebertaForMaskedLM(generator)
        tie_output_to_embedding(self.generator)
        self.discriminator = DebertaForReplacedTokenDetection(discriminator)
        if config.embedding_sharing != "none":
            self.discriminator.deberta.embeddings.word_embeddings = SharedWordEmbedding(
                self.generator.deberta.embeddings.word_embeddings, gdes=config.embedding_sharing == "gdes")

    def forward(self, input_ids, attention_mask, labels, original_ids):
        generated = self.generator(input_ids, attention_mask, labels=labels)
        targets = labels != -100
        with torch.no_grad():
            probs = F.softmax(generated.logits.float() / self.config.sampling_temperature, dim=-1)
            sampled = torch.multinomial(probs, 1).squeeze(-1) if probs.shape[0] else labels[targets]
            replaced_ids = original_ids.clone()
            replaced_ids[targets] = sampled
            rtd_labels = (replaced_ids != original_ids).long()
        judged = self.discriminator(replaced_ids, attention_mask, labels=rtd_labels)
        loss = generated.loss + self.config.rtd_lambda * judged.loss

        real = attention_mask.bool()
        predicted = judged.logits.detach() > 0
        return loss, {
            "mlm_loss": generated.loss.detach(), "rtd_loss": judged.loss.detach(),
            "mlm_correct": (generated.logits.detach().argmax(-1) == labels[targets]).sum(),
            "mlm_count": int(targets.sum()),
            "rtd_correct": (predicted == rtd_labels.bool())[real].sum(), "rtd_count": int(real.sum()),
            "replaced": rtd_labels[real].sum(),
            # for the AUC, computed by the caller over the whole validation set
            "rtd_scores": torch.sigmoid(judged.logits.detach().float())[real],
            "rtd_targets": rtd_labels[real],
        }


def build_objective(config: ObjectiveConfig, model_config: DebertaConfig) -> nn.Module:
    if config.objective == "mlm":
        return MLMObjective(model_config)
    return RTDObjective(discriminator_config(model_config), generator_config(config, model_config), config)


def discriminator_config(model_config: DebertaConfig) -> DebertaConfig:
    # The RTD head never uses absolute positions: no enhanced mask decoder, no table.
    return DebertaConfig.from_dict({**model_config.to_dict(), "emd_layers": 0})


def generator_config(config: ObjectiveConfig, model_config: DebertaConfig) -> DebertaConfig:
    if config.generator_config:
        generator = DebertaConfig.from_json(config.generator_config)
        return DebertaConfig.from_dict({**generator.to_dict(), "vocab_size": model_config.vocab_size,
                                        "attention_backend": model_config.attention_backend})
    return DebertaConfig.from_dict({**model_config.to_dict(),
                                    "num_hidden_layers": max(1, model_config.num_hidden_layers // 2)})
