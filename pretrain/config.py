"""Every setting of a pretraining run: one dataclass per component, all of them flags.

    deberta-pretrain --help                      # (or: python pretrain/main.py --help)
    deepspeed pretrain/main.py --config run.yaml --max_steps 1000

The command is built by ``deberta.cli.Command`` (one precedence for every command: flags,
then ``--config FILE``, then ``--recipe NAME`` (pretrain/recipes.py), then the objective's
masking defaults (RTD: [MASK] only), then the DeepSpeed JSON for the engine settings,
then the defaults). The chosen objective adds its own flags (``--objective rtd`` adds
``--rtd_lambda``, ``--embedding_sharing``, ...).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from deberta import PRESETS, DebertaConfig
from deberta.cli import Command, option
from training.config import EngineConfig, OptimizerConfig

from .data import DataConfig
from .masking import MaskingConfig
from .objectives import Objective, objective_class
from .recipes import RECIPES

# Pretraining's defaults where they differ from the shared dataclasses' (finetuning's).
PRETRAIN_DEFAULTS = {"ds_config": "ds_configs/zero2.json", "warmup_steps": 10_000, "adam_beta2": 0.98}


@dataclass
class RunConfig:
    objective: str = option("mlm", "mlm, rtd, or package.module:Class (a subclass of pretrain.objectives.Objective)")
    model_config: str = option("deberta-v3-base", "preset name or JSON file of DebertaConfig fields "
                                                  "(for RTD: the discriminator)")
    set_model: str = option("", 'DebertaConfig overrides, e.g. "hidden_size=64,num_hidden_layers=2"')
    init_model: str = option("", "continued pretraining: model folder (native, Hugging Face or official) of the "
                                 "MLM model or the RTD discriminator; the architecture is then the folder's "
                                 "(--set_model: dropout and attention_backend only)")
    init_generator: str = option("", "RTD: the generator's model folder or weights file (default: "
                                     "pytorch_model.generator.bin or generator/ beside --init_model; else a "
                                     "fresh generator, logged)")
    tokenizer: str = option("", "tokenizer file or folder (default: the one data_prep stored with the data)")
    output_dir: str = option("runs/pretrain", "run folder: checkpoints/, tensorboard/, metrics.jsonl, eval.jsonl")
    max_steps: int = option(1000, "optimizer steps of the whole run (the schedule decays to 0 there)")
    seed: int = option(1234, "initial weights, data order, masking and dropout")
    activation_checkpointing: bool = option(False, "recompute layer activations in the backward pass")
    attention_backend: str = option("", "eager|sdpa|... (default: the model config's)")
    log_interval: int = option(10, "optimizer steps between progress lines and TensorBoard points")
    eval_interval: int = option(500, "optimizer steps between validations")
    tensorboard: bool = option(True, "write TensorBoard events to OUTPUT/tensorboard")

    def __post_init__(self):
        if self.max_steps < 1 or self.log_interval < 1 or self.eval_interval < 1:
            raise ValueError(f"max_steps={self.max_steps}, log_interval={self.log_interval} and "
                             f"eval_interval={self.eval_interval} must be >= 1")
        objective_class(self.objective)  # a bad name or module fails here, naming it
        if self.init_generator and not self.init_model:
            raise ValueError("init_generator needs init_model (the discriminator the generator was trained with)")


@dataclass
class CheckpointConfig:
    save_interval: int = option(1000, "optimizer steps between checkpoints (and one at the end)")
    keep_checkpoints: int = option(3, "newest complete checkpoints kept; older ones are deleted")
    universal_checkpoint: bool = option(False, "resume from a DeepSpeed universal checkpoint (another world "
                                               "size or ZeRO stage)")
    force_resume: bool = option(False, "resume although the model, objective, tokenizer, global batch or seed "
                                       "changed (they are listed; the weights must still fit the model)")

    def __post_init__(self):
        if self.save_interval < 1 or self.keep_checkpoints < 1:
            raise ValueError(f"save_interval={self.save_interval} and keep_checkpoints="
                             f"{self.keep_checkpoints} must be >= 1")


SECTIONS = {"run": RunConfig, "data": DataConfig, "masking": MaskingConfig, "engine": EngineConfig,
            "optimizer": OptimizerConfig, "checkpoint": CheckpointConfig}


@dataclass
class TrainConfig:
    run: RunConfig
    data: DataConfig
    masking: MaskingConfig
    engine: EngineConfig
    optimizer: OptimizerConfig
    checkpoint: CheckpointConfig
    objective: Any  # the objective's Options dataclass

    @property
    def objective_class(self) -> type[Objective]:
        return objective_class(self.run.objective)

    def model_config(self, log=print) -> DebertaConfig:
        """The architecture (RTD: the discriminator's) with --set_model and --attention_backend applied,
        then completed by the objective (``Objective.resolve_model_config``; its notes go to ``log``)."""
        overrides = parse_overrides(self.run.set_model)
        given = frozenset(overrides) | json_fields(self.run.model_config)
        if self.run.attention_backend:
            overrides["attention_backend"] = self.run.attention_backend
        if self.run.init_model:  # the folder's architecture, as stored (pretrain/init_weights.py)
            from .init_weights import folder_model_config
            return folder_model_config(self.run.init_model, overrides)
        return self.objective_class.resolve_model_config(self.objective, model_config(self.run.model_config, overrides),
                                                         given, log)

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in (*SECTIONS, "objective")}


def model_config(name_or_path: str, overrides: dict) -> DebertaConfig:
    """A preset or JSON file of DebertaConfig fields, with ``overrides`` applied to the stored
    fields before the derived ones (embedding_size, attention_head_size) follow hidden_size."""
    if name_or_path in PRESETS:
        return DebertaConfig.from_preset(name_or_path, **overrides)
    try:
        values = json.loads(Path(name_or_path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--model_config {name_or_path}: neither a preset ({sorted(PRESETS)}) "
                         f"nor a readable JSON file ({error})") from None
    return DebertaConfig.from_dict({**values, **overrides})


def json_fields(name_or_path: str) -> frozenset:
    """The fields a JSON model config sets explicitly (none for a preset)."""
    if name_or_path in PRESETS:
        return frozenset()
    try:
        values = json.loads(Path(name_or_path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return frozenset()  # model_config() reports the unreadable file
    return frozenset(values) if isinstance(values, dict) else frozenset()


def parse_overrides(text: str) -> dict:
    """ "a=1,b=x" -> {"a": 1, "b": "x"} (values parsed as JSON where they are)."""
    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        if "=" not in item:
            raise ValueError(f"--set_model item {item!r} is not NAME=VALUE")
        name, value = item.split("=", 1)
        try:
            values[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            values[name.strip()] = value
    return values


def _first_look(argv: list[str]) -> tuple[str, Optional[str]]:
    """(objective, recipe) before the full parse: the objective decides which flags exist.
    The same precedence as the full parse: flag, config file, recipe, default."""
    peek = argparse.ArgumentParser(add_help=False)
    for name in ("objective", "config", "recipe"):
        peek.add_argument(f"--{name}")
    known, _ = peek.parse_known_args(argv)
    objective = known.objective
    if objective is None and known.config:
        try:
            objective = (yaml.safe_load(Path(known.config).read_text(encoding="utf-8")) or {}).get("objective")
        except (OSError, yaml.YAMLError, AttributeError):
            objective = None  # the full parse reports the unreadable file
    if objective is None and known.recipe in RECIPES:
        objective = RECIPES[known.recipe].get("objective")
    return objective or RunConfig.objective, known.recipe


def build_command(argv: list[str]) -> Command:
    objective, recipe = _first_look(argv)
    command = Command("deberta-pretrain", "DeBERTa pretraining (MLM, RTD or a plugin objective) on DeepSpeed. "
                      "Launch with `deepspeed pretrain/main.py ...`.", SECTIONS, defaults=PRETRAIN_DEFAULTS,
                      extra={"recipe": dict(choices=sorted(RECIPES), help="published hyper-parameters as defaults"),
                             "local_rank": dict(type=int, default=-1, help=argparse.SUPPRESS)})
    try:
        cls = objective_class(objective)
    except ValueError as error:
        command.parser.error(str(error))
    command.add_section("objective", cls.Options)
    # The objective's masking defaults (RTD: [MASK] only), below flags, --config and --recipe.
    unknown = sorted(set(cls.masking_defaults) - {f.name for f in dataclasses.fields(MaskingConfig)})
    if unknown:
        command.parser.error(f"--objective {objective}: masking_defaults names {unknown}, not masking settings")
    command.set_defaults(cls.masking_defaults)
    if recipe in RECIPES:
        command.set_defaults(RECIPES[recipe])
    return command


def parse_args(argv: Optional[list[str]] = None) -> TrainConfig:
    import sys
    argv = list(sys.argv[1:] if argv is None else argv)
    return TrainConfig(**build_command(argv).parse(argv))
