"""Pretraining objectives as plugins: the trainer and the converter know only this protocol.

An objective is a ``torch.nn.Module`` subclass of ``Objective`` that

  - declares its flags as a dataclass, ``Options`` (added to the command line when the
    objective is chosen; ``NoOptions`` when it has none), and its defaults for the masking
    flags, ``masking_defaults`` (below flags, ``--config`` and ``--recipe``);
  - may complete the user's model config (``resolve_model_config``: MLM adds the enhanced
    mask decoder where the model has no other absolute positions);
  - builds its models from (options, model config) in ``__init__``, and says how to
    rebuild them from a checkpoint alone (``describe`` -> JSON, ``from_description``);
  - owns its update: ``engine_modules`` names the modules that get an optimizer each (one
    DeepSpeed engine per entry; the whole objective by default), and ``train_step`` runs
    one optimizer step's micro-batches through them: forward, backward, ``agree`` with
    the other ranks before each update, update (two optimizers may update one after the
    other, each after its own agreement);
  - returns metric tensors that add up over micro-batches and ranks (sums and counts,
    histograms) and turns their totals into reported figures (``summarize``), for a
    training step and for a whole evaluation alike;
  - counts its training FLOPs per token and exports its model folders (``export_models``);
  - computes MLM outputs at ``max_predictions`` positions per sequence (a fixed number the
    trainer sets from the masking config, so that a step's shapes never depend on the
    data; None: exactly the targets).

``--objective mlm|rtd`` names a built-in one; ``--objective package.module:Class`` loads
any other importable class.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import ClassVar, Mapping, Optional, Sequence

import torch
from torch import nn

from deberta import DebertaConfig
from deberta.model import DebertaPreTrained
from training.sync import StepAgreement

BUILTIN = {"mlm": "pretrain.objectives.mlm:MaskedLanguageModeling",
           "rtd": "pretrain.objectives.rtd:ReplacedTokenDetection"}


@dataclasses.dataclass
class NoOptions:
    """An objective without flags of its own."""


class Objective(nn.Module):
    Options: ClassVar[type] = NoOptions
    masking_defaults: ClassVar[dict] = {}  # e.g. {"replace_with_mask": 1.0}: MaskingConfig fields
    max_predictions: Optional[int] = None  # MLM outputs per sequence (MaskingConfig.max_predictions)

    @classmethod
    def resolve_model_config(cls, options, model_config: DebertaConfig, given: frozenset, log) -> DebertaConfig:
        """The model config to train, from the one the user described (and the objective's
        ``options``); ``given`` names the fields
        the user set explicitly (``--set_model``, a JSON model config), ``log`` prints a line on
        rank 0. Called once when a run starts (not by ``from_description``: checkpoints hold the
        result)."""
        return model_config

    def __init__(self, options, model_config: DebertaConfig):
        super().__init__()
        self.options = options
        self.model_config = model_config

    # --- building and rebuilding ------------------------------------------------------
    def describe(self) -> dict:
        """Everything ``from_description`` needs to rebuild the models (stored in checkpoints)."""
        return {"model_config": self.model_config.to_dict(), "options": dataclasses.asdict(self.options)}

    @classmethod
    def from_description(cls, description: dict) -> "Objective":
        return cls(cls.Options(**description.get("options", {})),
                   DebertaConfig.from_dict(description["model_config"]))

    @classmethod
    def from_pretrained(cls, options, model_config: DebertaConfig, init_model: str, init_generator: str,
                        weights: bool, log) -> "Objective":
        """Continued pretraining: the objective on the weights of the model folder ``init_model``
        (``model_config`` is that folder's architecture, runtime overrides applied) and, for a
        second model, ``init_generator``. ``weights`` is False when the run resumes: build
        the architecture only. Helpers: ``pretrain.init_weights``."""
        raise ValueError(f"--init_model: the objective {cls.__module__}.{cls.__name__} cannot start from a model "
                         f"folder (it does not implement Objective.from_pretrained)")

    # --- training -----------------------------------------------------------------------
    def engine_modules(self) -> dict[str, nn.Module]:
        """The modules that get an optimizer (a DeepSpeed engine) each, stepped in this order,
        by their attribute path in the objective ("": the objective itself, the default)."""
        return {"": self}

    def optimizer_overrides(self, engine_name: str) -> dict:
        """OptimizerConfig fields that differ for one engine (e.g. its learning rate)."""
        return {}

    def train_step(self, micro_batches: Sequence[Mapping[str, torch.Tensor]], engines: Mapping,
                   agreement: StepAgreement) -> None:
        """One optimizer step over ``micro_batches``. Record each micro-batch's metric tensors
        ("loss" included: it is checked for non-finite values) and call ``agreement.agree()``
        before the update, which happens in the engine's ``step`` after the last micro-batch."""
        engine = engines[""]
        for index, batch in enumerate(micro_batches):
            loss, metrics = engine(**batch)
            engine.backward(loss)
            agreement.record({"loss": loss.detach(), **metrics})
            if index == len(micro_batches) - 1:
                agreement.agree()
            engine.step()

    def eval_batch(self, batch: Mapping[str, torch.Tensor], engines: Mapping) -> dict[str, torch.Tensor]:
        """The metric tensors of one validation batch (in eval mode, under no_grad)."""
        _, metrics = engines[""](**batch)
        return metrics

    def forward(self, input_ids, attention_mask, labels, original_ids):
        """(loss, metric tensors) of a batch; in eval mode the metrics cover a whole evaluation."""
        raise NotImplementedError

    def summarize(self, totals: Mapping[str, torch.Tensor], training: bool) -> dict[str, float]:
        """Reported figures (a "loss" among them) from metric totals over micro-batches and ranks."""
        raise NotImplementedError

    def flops_per_token(self, seq_len: int, target_fraction: float) -> float:
        """Training FLOPs per token (forward and backward)."""
        raise NotImplementedError

    # --- export ---------------------------------------------------------------------------
    def export_models(self) -> dict[str, DebertaPreTrained]:
        """Model folders to write, by sub-folder ("" is the output folder itself)."""
        raise NotImplementedError


def objective_class(spec: str) -> type[Objective]:
    """``mlm``, ``rtd`` or ``package.module:Class``."""
    path = BUILTIN.get(spec, spec)
    module_name, _, class_name = path.partition(":")
    if not class_name:
        raise ValueError(f"--objective {spec!r}: not one of {sorted(BUILTIN)} nor 'package.module:Class'")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"--objective {spec!r}: cannot load {class_name} from {module_name} ({error})") from None
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise ValueError(f"--objective {spec!r}: {cls!r} is not a subclass of pretrain.objectives.Objective")
    return cls


def training_flops(forward_flops: float) -> float:
    """The backward pass costs about twice the forward: 3 x forward."""
    return 3 * forward_flops
