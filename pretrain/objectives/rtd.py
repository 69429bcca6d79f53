"""Replaced-token detection (ELECTRA-style, DeBERTa-v3).

A generator (an MLM model, by default the discriminator's shape at half its depth)
predicts the masked tokens; a token is sampled from its softmax at each masked position;
the discriminator sees the original sequence with those samples in place and classifies
every real token as replaced or original (a sample equal to the original counts as
original).

    loss = generator MLM loss + rtd_lambda x discriminator BCE      (lambda = 50 in v3)

Embedding sharing between the two (``embedding_sharing``):
  gdes   the discriminator's word embedding = stop_gradient(generator's) + delta, delta
         initialised to zero: the discriminator's loss moves only delta, the generator's
         only the shared table (gradient-disentangled embedding sharing, v3's default)
  shared one table, trained by both losses (ELECTRA)
  none   two independent tables
Export folds the delta: the discriminator's folder holds one plain table, E_gen + delta.
"""
from __future__ import annotations

from dataclasses import dataclass

import deepspeed
import torch
import torch.nn.functional as F
from torch import nn

from deberta import DebertaConfig, DebertaForMaskedLM, DebertaForReplacedTokenDetection
from deberta.model import target_positions
from deberta.cli import option

from ..metrics import AUC_BINS, auc_from_histograms, forward_flops_per_token
from . import Objective, training_flops
from .mlm import mlm_figures, mlm_metrics, tie_output_to_embedding, with_position_decoder

SHARING = ("gdes", "shared", "none")


@dataclass
class RTDOptions:
    rtd_lambda: float = option(50.0, "weight of the discriminator loss")
    embedding_sharing: str = option("gdes", "gdes|shared|none: how generator and discriminator share the "
                                            "word embedding")
    generator_config: str = option("", "generator architecture: preset name or JSON file "
                                       "(default: the discriminator at half depth)")
    sampling_temperature: float = option(1.0, "of the generator's softmax when sampling replacements")
    decoupled_training: bool = option(True, "generator and discriminator each with its own optimizer (Adam state, "
                                            "gradient clipping, fp16 loss scale, learning rate), the generator "
                                            "updated first, then the discriminator on its samples (the authors' v3 "
                                            "default); false: one optimizer on the joint loss")
    discriminator_lr: float = option(0.0, "the discriminator's peak learning rate when decoupled (0: --lr)")

    def __post_init__(self):
        if self.embedding_sharing not in SHARING:
            raise ValueError(f"embedding_sharing={self.embedding_sharing!r}; allowed: {SHARING}")
        if self.discriminator_lr < 0:
            raise ValueError(f"discriminator_lr={self.discriminator_lr} must be >= 0 (0: --lr)")
        if self.discriminator_lr and not self.decoupled_training:
            raise ValueError("discriminator_lr needs decoupled_training: one optimizer has one learning rate")
        if self.rtd_lambda <= 0 or self.sampling_temperature <= 0:
            raise ValueError(f"rtd_lambda={self.rtd_lambda} and sampling_temperature="
                             f"{self.sampling_temperature} must be > 0")


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
        """The effective table (used when folding the delta at export)."""
        source = self._source[0].weight
        return source.detach() + self.delta if self.delta is not None else source

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight, self.padding_idx)


def discriminator_config(model_config: DebertaConfig) -> DebertaConfig:
    # The RTD head never uses absolute positions: no enhanced mask decoder, no table.
    return DebertaConfig.from_dict({**model_config.to_dict(), "emd_layers": 0})


def generator_config(options: RTDOptions, model_config: DebertaConfig) -> DebertaConfig:
    if options.generator_config:
        generator = DebertaConfig.from_json(options.generator_config)
        return DebertaConfig.from_dict({**generator.to_dict(), "vocab_size": model_config.vocab_size,
                                        "attention_backend": model_config.attention_backend})
    return DebertaConfig.from_dict({**model_config.to_dict(),
                                    "num_hidden_layers": max(1, model_config.num_hidden_layers // 2)})


class ReplacedTokenDetection(Objective):
    Options = RTDOptions
    # The official RTD task masks the generator's targets with [MASK] only (mask_prob 1, keep_prob 0
    # in rtd_task.py), at subword level (max_ngram 1).
    masking_defaults = {"replace_with_mask": 1.0, "replace_with_random": 0.0}

    @classmethod
    def resolve_model_config(cls, options, model_config, given, log):
        """The generator, when derived from this config, decodes with EMD as an MLM model does."""
        if options.generator_config:
            return model_config
        return with_position_decoder(model_config, given, log, "the RTD generator")

    def __init__(self, options: RTDOptions, model_config: DebertaConfig, generator: DebertaConfig | None = None):
        super().__init__(options, model_config)
        discriminator = discriminator_config(model_config)
        generator = generator or generator_config(options, model_config)
        if options.embedding_sharing != "none":
            for name in ("vocab_size", "embedding_size", "pad_token_id"):
                if getattr(generator, name) != getattr(discriminator, name):
                    raise ValueError(f"embedding sharing needs the same {name} in generator "
                                     f"({getattr(generator, name)}) and discriminator ({getattr(discriminator, name)})")
        self.generator = DebertaForMaskedLM(generator)
        tie_output_to_embedding(self.generator)
        self.discriminator = DebertaForReplacedTokenDetection(discriminator)
        if options.embedding_sharing != "none":
            self.discriminator.deberta.embeddings.word_embeddings = SharedWordEmbedding(
                self.generator.deberta.embeddings.word_embeddings, gdes=options.embedding_sharing == "gdes")

    # The keys of checkpoints written before objectives were plugins, so those still convert.
    def describe(self):
        return {**super().describe(), "discriminator_config": self.discriminator.config.to_dict(),
                "generator_config": self.generator.config.to_dict(),
                "embedding_sharing": self.options.embedding_sharing}

    @classmethod
    def from_description(cls, description):
        # Checkpoints written before decoupled training existed trained the joint loss.
        options = RTDOptions(**{"decoupled_training": False, **description.get("options", {}),
                                "embedding_sharing": description["embedding_sharing"], "generator_config": ""})
        return cls(options, DebertaConfig.from_dict(description["model_config"]),
                   generator=DebertaConfig.from_dict(description["generator_config"]))

    @classmethod
    def from_pretrained(cls, options, model_config, init_model, init_generator, weights, log):
        """The discriminator from ``init_model``, the generator from ``init_generator`` or found
        beside it (else a fresh one, logged); GDES keeps the discriminator's table exactly."""
        from ..init_weights import rtd_from_pretrained
        return rtd_from_pretrained(cls, options, model_config, init_model, init_generator, weights, log)

    # --- one optimizer on the joint loss (the objective is the engine's module) ------------
    def forward(self, input_ids, attention_mask, labels, original_ids):
        generated, replaced_ids, rtd_labels = self.generate(self.generator, input_ids, attention_mask, labels,
                                                            original_ids)
        judged, metrics = self.judge(self.discriminator, replaced_ids, attention_mask, rtd_labels)
        loss = generated.loss + self.options.rtd_lambda * judged.loss
        return loss, {**mlm_metrics(generated), **metrics}

    # --- decoupled: one engine each, the generator updated first ---------------------------
    def engine_modules(self):
        if not self.options.decoupled_training:
            return super().engine_modules()
        return {"generator": self.generator, "discriminator": self.discriminator}

    def optimizer_overrides(self, engine_name):
        if engine_name == "discriminator" and self.options.discriminator_lr:
            return {"lr": self.options.discriminator_lr}
        return {}

    def train_step(self, micro_batches, engines, agreement):
        """The authors' order: every micro-batch through the generator (its MLM loss, and the
        sampled replacements, made before the update), the generator's update, then every
        micro-batch's replacements through the discriminator (its loss scaled by lambda, as
        the authors' code does, so that clipping sees the same gradients) and its update."""
        if not self.options.decoupled_training:
            return super().train_step(micro_batches, engines, agreement)
        generator, discriminator = engines["generator"], engines["discriminator"]
        judged_inputs = []
        for index, batch in enumerate(micro_batches):
            generated, replaced_ids, rtd_labels = self.generate(generator, batch["input_ids"], batch["attention_mask"],
                                                                batch["labels"], batch["original_ids"])
            generator.backward(generated.loss)
            agreement.record({"loss": generated.loss.detach(),
                              **mlm_metrics(generated)})
            judged_inputs.append((replaced_ids, rtd_labels))
            if index == len(micro_batches) - 1:
                agreement.agree()
            generator.step()
        for index, (batch, (replaced_ids, rtd_labels)) in enumerate(zip(micro_batches, judged_inputs)):
            judged, metrics = self.judge(discriminator, replaced_ids, batch["attention_mask"], rtd_labels)
            loss = self.options.rtd_lambda * judged.loss
            discriminator.backward(loss)
            agreement.record({"loss": loss.detach(), **metrics})
            if index == len(micro_batches) - 1:
                agreement.agree()
            discriminator.step()

    def eval_batch(self, batch, engines):
        if not self.options.decoupled_training:
            return super().eval_batch(batch, engines)
        generated, replaced_ids, rtd_labels = self.generate(engines["generator"], batch["input_ids"],
                                                            batch["attention_mask"], batch["labels"],
                                                            batch["original_ids"])
        _, metrics = self.judge(engines["discriminator"], replaced_ids, batch["attention_mask"], rtd_labels)
        return {**mlm_metrics(generated), **metrics}

    # --- the two halves, through modules or their engines ----------------------------------
    def generate(self, generator, input_ids, attention_mask, labels, original_ids):
        """(generator output, the sequence with the sampled replacements, replaced-or-not labels)."""
        generated = generator(input_ids, attention_mask, labels=labels, max_predictions=self.max_predictions)
        with torch.no_grad():
            probs = F.softmax(generated.logits.float() / self.options.sampling_temperature, dim=-1)
            sampled = torch.multinomial(probs, 1).squeeze(-1) if probs.shape[0] else generated.labels
            if self.max_predictions is None:
                replaced_ids = original_ids.clone()
                replaced_ids[labels != -100] = sampled
            else:  # rows in a fixed layout: filler rows write the original token back
                positions = target_positions(labels, self.max_predictions)
                kept = generated.labels.view_as(positions) != -100
                sampled = torch.where(kept, sampled.view_as(positions), original_ids.gather(1, positions))
                replaced_ids = original_ids.scatter(1, positions, sampled)
            rtd_labels = (replaced_ids != original_ids).long()
        return generated, replaced_ids, rtd_labels

    def judge(self, discriminator, replaced_ids, attention_mask, rtd_labels):
        """(discriminator output, its metric tensors over the real tokens; in evaluation also
        the score histograms of replaced and original tokens, for the AUC)."""
        judged = discriminator(replaced_ids, attention_mask, labels=rtd_labels)
        real = attention_mask.bool()
        count = real.sum()
        metrics = {"rtd_loss_sum": judged.loss.detach().double() * count, "rtd_count": count,
                   "rtd_correct": (((judged.logits.detach() > 0) == rtd_labels.bool()) & real).sum(),
                   "replaced": (rtd_labels.bool() & real).sum()}
        if not self.discriminator.training:
            scores = torch.sigmoid(judged.logits.detach().float())[real].double()
            replaced = rtd_labels[real].bool()
            metrics["auc_replaced"] = torch.histc(scores[replaced], AUC_BINS, 0, 1)
            metrics["auc_original"] = torch.histc(scores[~replaced], AUC_BINS, 0, 1)
        return judged, metrics

    def summarize(self, totals, training):
        figures = mlm_figures(totals)
        count = max(1.0, float(totals["rtd_count"]))
        figures.update(rtd_loss=float(totals["rtd_loss_sum"]) / count, rtd_acc=float(totals["rtd_correct"]) / count)
        if training:
            figures["replaced_fraction"] = float(totals["replaced"]) / count
        else:
            figures["rtd_auc"] = auc_from_histograms(totals["auc_replaced"], totals["auc_original"])
        return {**figures, "loss": figures["mlm_loss"] + self.options.rtd_lambda * figures["rtd_loss"]}

    def flops_per_token(self, seq_len, target_fraction):
        return training_flops(
            forward_flops_per_token(self.generator.config, seq_len, target_fraction, mlm_head=True)
            + forward_flops_per_token(self.discriminator.config, seq_len, target_fraction, mlm_head=False))

    def export_models(self):
        """The discriminator with a plain word embedding (E_gen + delta under GDES), and the generator."""
        discriminator = DebertaForReplacedTokenDetection(self.discriminator.config)
        state = self.discriminator.state_dict()
        word = "deberta.embeddings.word_embeddings."
        if self.options.embedding_sharing != "none":
            state.pop(word + "delta", None)
            state[word + "weight"] = self.discriminator.deberta.embeddings.word_embeddings.weight.detach().clone()
        discriminator.load_state_dict(state)
        return {"": discriminator.eval(), "generator": self.generator.eval()}
