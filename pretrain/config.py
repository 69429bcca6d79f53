"""Every setting of a pretraining run: one dataclass per component, all of them flags.

``parse_args`` turns each field of the dataclasses below into ``--field`` (booleans take
``true``/``false``); ``--recipe NAME`` first sets the defaults of a published recipe
(pretrain/recipes.py), and explicit flags win over it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from dataclasses import dataclass
from typing import Optional

from deberta import PRESETS, DebertaConfig

from .data import DataConfig
from .masking import MaskingConfig
from .objectives import ObjectiveConfig
from .recipes import RECIPES

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class OptimizerConfig:
    lr: float = 1e-4  # peak learning rate, reached after warmup_steps
    warmup_steps: int = 10_000  # linear warmup from 0, then linear decay to 0 at max_steps
    weight_decay: float = 0.01  # not applied to biases, LayerNorms and the GDES delta
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-6
    clip_grad: float = 1.0  # global gradient-norm clipping; 0 disables

    def __post_init__(self):
        if self.lr <= 0 or self.warmup_steps < 0 or self.weight_decay < 0 or self.clip_grad < 0:
            raise ValueError(f"lr={self.lr} must be > 0; warmup_steps={self.warmup_steps}, weight_decay="
                             f"{self.weight_decay}, clip_grad={self.clip_grad} must be >= 0")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1 and self.adam_eps > 0):
            raise ValueError(f"adam betas ({self.adam_beta1}, {self.adam_beta2}) must be in [0, 1), "
                             f"adam_eps={self.adam_eps} > 0")


@dataclass
class CheckpointConfig:
    save_interval: int = 1000  # optimizer steps between checkpoints (and one at the end)
    keep_checkpoints: int = 3  # newest complete checkpoints kept; older ones are deleted
    universal_checkpoint: bool = False  # resume from a DeepSpeed universal checkpoint (other world size)

    def __post_init__(self):
        if self.save_interval < 1 or self.keep_checkpoints < 1:
            raise ValueError(f"save_interval={self.save_interval} and keep_checkpoints="
                             f"{self.keep_checkpoints} must be >= 1")


@dataclass
class RunConfig:
    ds_config: str = "ds_configs/zero2.json"
    model_config: str = "deberta-v3-base"  # preset name or JSON file of DebertaConfig fields
    set_model: str = ""  # comma-separated DebertaConfig overrides, e.g. "hidden_size=64,num_hidden_layers=2"
    tokenizer: str = ""  # "": the tokenizer that data_prep stored with the data
    output_dir: str = "runs/pretrain"
    max_steps: int = 1000
    seed: int = 1234
    # Batch: global = micro x accumulation x ranks; unset (0) values come from the
    # DeepSpeed config or are derived from the others.
    global_batch_size: int = 0
    micro_batch_size: int = 0
    grad_accum: int = 0
    precision: str = "auto"  # auto: the DeepSpeed config's, else bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU
    zero_stage: int = -1  # -1: the DeepSpeed config's
    activation_checkpointing: bool = False
    attention_backend: str = ""  # "": the model config's (eager or sdpa)
    log_interval: int = 10
    eval_interval: int = 500
    tensorboard: bool = True

    def __post_init__(self):
        if self.max_steps < 1 or self.log_interval < 1 or self.eval_interval < 1:
            raise ValueError(f"max_steps={self.max_steps}, log_interval={self.log_interval} and "
                             f"eval_interval={self.eval_interval} must be >= 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}; allowed: {PRECISIONS}")
        if self.zero_stage not in (-1, 0, 1, 2, 3):
            raise ValueError(f"zero_stage={self.zero_stage}; allowed: 0, 1, 2, 3 (or -1: from the DeepSpeed config)")
        for name in ("global_batch_size", "micro_batch_size", "grad_accum"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 (0: from the DeepSpeed config)")


@dataclass
class TrainConfig:
    run: RunConfig
    data: DataConfig
    masking: MaskingConfig
    objective: ObjectiveConfig
    optimizer: OptimizerConfig
    checkpoint: CheckpointConfig

    def model_config(self) -> DebertaConfig:
        """The (discriminator's, for RTD) architecture with --set_model and --attention_backend applied."""
        overrides = parse_overrides(self.run.set_model)
        if self.run.attention_backend:
            overrides["attention_backend"] = self.run.attention_backend
        return model_config(self.run.model_config, overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_SECTION_TYPES = {"run": RunConfig, "data": DataConfig, "masking": MaskingConfig,
                  "objective": ObjectiveConfig, "optimizer": OptimizerConfig, "checkpoint": CheckpointConfig}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="DeBERTa pretraining (MLM or RTD) on DeepSpeed. Launch with `deepspeed pretrain/main.py ...`.")
    parser.add_argument("--recipe", choices=sorted(RECIPES), help="published hyper-parameters as defaults")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by launchers
    for section, cls in _SECTION_TYPES.items():
        group = parser.add_argument_group(section)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            kind = type(default) if default is not None else str
            group.add_argument(f"--{f.name}", dest=f"{section}.{f.name}", default=default,
                               type=_parse_bool if kind is bool else kind, metavar=kind.__name__.upper(),
                               help=f"default: {default!r}")
    return parser


def parse_args(argv: Optional[list[str]] = None) -> TrainConfig:
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.recipe:
        destinations = {action.dest.split(".", 1)[1]: action.dest for action in parser._actions if "." in action.dest}
        parser.set_defaults(**{destinations[k]: v for k, v in RECIPES[known.recipe].items()})
    args = parser.parse_args(argv)
    values: dict[str, dict] = {section: {} for section in _SECTION_TYPES}
    for dest, value in vars(args).items():
        if "." in dest:
            section, name = dest.split(".", 1)
            values[section][name] = value
    return TrainConfig(**{section: cls(**values[section]) for section, cls in _SECTION_TYPES.items()})
