"""Every setting of a finetuning run: the task section, and the optimizer and engine
sections shared with pretraining (``training.config``), all of them flags.

    python -m finetune --task sst-2 --data_dir glue/SST-2 --model models/v3 --output_dir ft/sst2
    deepspeed finetune/main.py --ds_config ds_configs/finetune_bf16.json --task mnli ...
    python -m finetune --config run.yaml --lr 3e-5

The command is built by ``deberta.cli.Command``, with the precedence of every command:
flags, then ``--config FILE``, then the recipe (``--recipe``, by default chosen from the
task and the model's size: finetune/recipes.py), then the DeepSpeed JSON (batch sizes,
precision, ZeRO stage, clipping), then finetuning's defaults (``FINETUNE_DEFAULTS``, and
a micro-batch of ``DEFAULT_MICRO_BATCH``), then the dataclass defaults. Older flag names stay as aliases
(``--learning_rate``, ``--batch_size``, ``--gradient_accumulation_steps``,
``--max_grad_norm``, ``--adam_epsilon``).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from deberta.attention import ATTENTION_BACKENDS
from deberta.cli import Command, option, required
from training.config import EngineConfig, OptimizerConfig

# Finetuning's defaults where they differ from the shared dataclasses' (the authors' GLUE settings).
FINETUNE_DEFAULTS = {"lr": 2e-5, "warmup_ratio": 0.1, "adam_beta2": 0.999, "weight_decay": 0.01, "adam_eps": 1e-6}
DEFAULT_MICRO_BATCH = 32  # taken when neither the flags nor the DeepSpeed JSON give one


@dataclass
class TaskConfig:
    """What to train on what, for how long, and what to write."""
    task: str = required("task name: GLUE (cola, sst-2, mrpc, sts-b, qqp, mnli, qnli, rte, wnli), SuperGLUE "
                         "(boolq, cb, copa, multirc, record, superglue-rte, wic, wsc, ax-b, ax-g), xnli, anli, "
                         "anli-r1/-r2/-r3, squad, squad2, race, ner, custom")
    model: str = required("model folder (native, Hugging Face or official DeBERTa)")
    output_dir: str = required("where eval_results.json, predictions, metrics.jsonl, eval.jsonl and best/ go")
    data_dir: Optional[str] = option(None, "folder with the task's standard files")
    train: Optional[str] = option(None, "training file (overrides data_dir's)")
    dev: Optional[str] = option(None, "evaluation file (overrides data_dir's)")
    test: Optional[str] = option(None, "unlabelled file to predict")
    # custom task
    text_cols: Optional[str] = option(None, "custom: one or two text columns, comma-separated")
    label_col: str = option("label", "custom: the label column")
    labels: Optional[str] = option(None, "custom: label set, comma-separated (default: the training file's "
                                         "labels, sorted)")
    regression: bool = option(False, "custom: a real-valued label (MSE loss)")
    # sequences
    max_seq_length: int = option(128, "tokens per input, special tokens included")
    pair_truncation: str = option("longest_first", "GLUE and custom tables, an input over max_seq_length: "
                                                   "longest_first (the longer text loses its last tokens) or "
                                                   "official (it loses its first or last token at random, "
                                                   "seeded, as the official data code)")
    unpadded: bool = option(False, "pack each batch's sequences end to end with no padding (cumulative "
                                   "lengths): same results, the per-token work done on real tokens only")
    attention_backend: Optional[str] = option(None, "attention kernel: eager, sdpa or triton (fused; with "
                                                    "--unpadded it attends on the packed tokens); default: the "
                                                    "model folder's config")
    doc_stride: int = option(128, "squad: tokens between the starts of context windows")
    max_query_length: int = option(64, "squad: question tokens kept")
    max_answer_length: int = option(30, "squad: longest predicted answer in tokens")
    n_best: int = option(20, "squad: start/end candidates considered per window")
    null_score_threshold: float = option(0.0, "squad2: predict no answer when its score beats the best span by "
                                              "more than this")
    max_train_examples: int = option(0, "use only the first N training examples (0: all)")
    max_eval_examples: int = option(0, "evaluate only the first N examples (0: all)")
    # length of the run
    epochs: float = option(3.0, "training epochs")
    max_steps: int = option(0, "optimizer steps; overrides epochs when > 0")
    eval_batch_size: int = option(64, "examples per rank when evaluating")
    cls_dropout: Optional[float] = option(None, "classifier dropout (default: the model's)")
    init_task_model: Optional[str] = option(None, "start from this model folder finetuned on another task (the "
                                                  "official MRPC, RTE and STS-B runs start from MNLI's): its "
                                                  "backbone and pooler, and its classifier where the shapes fit; "
                                                  "--model gives the architecture and tokenizer")
    seed: int = option(42, "initial head weights, data order and dropout")
    seeds: str = option("1", "runs of the task: N (seeds --seed, --seed+1, ..., each in OUTPUT/seed_<s>/, then "
                             "OUTPUT/seeds_summary.json with the median and spread), or a comma-separated list of "
                             "seeds (1,2,3)")
    # SiFT
    sift: bool = option(False, "virtual adversarial training on normalised embeddings")
    sift_lambda: float = option(5.0, "weight of the adversarial loss (5: the official -sift recipes; v3 xsmall 3)")
    sift_step_size: float = option(1e-4, "ascent step of the perturbation")
    sift_init_noise: float = option(1e-2, "std of the initial perturbation")
    # evaluation and outputs
    eval_interval: int = option(0, "evaluate every N optimizer steps (0: each epoch)", aliases=["eval_steps"])
    metric_for_best: Optional[str] = option(None, "default: the task's main metric")
    early_stopping_patience: int = option(0, "stop after N evaluations without improvement (0: never)")
    save_best: bool = option(True, "write the best model to OUTPUT/best")
    log_interval: int = option(50, "optimizer steps between progress lines, metrics.jsonl lines and "
                                    "TensorBoard points", aliases=["logging_steps"])
    progress_bar: bool = option(True, "print the progress line every --log_interval (metrics.jsonl is "
                                      "written either way)")
    tensorboard: bool = option(True, "write TensorBoard events to OUTPUT/tensorboard")
    # checkpoints and resume
    save_interval: int = option(1000, "optimizer steps between resumable checkpoints in OUTPUT/checkpoints (0: only "
                                      "on SIGTERM); the same command run again resumes from the newest")
    keep_checkpoints: int = option(1, "newest complete checkpoints kept (a completed run removes them; best/ is "
                                      "its model)")
    force_resume: bool = option(False, "resume although settings that define the run changed (they are listed)")

    def __post_init__(self):
        def fail(name, allowed):
            raise ValueError(f"--{name}={getattr(self, name)!r} is invalid; allowed: {allowed}")

        from .tasks import TASKS  # here, not at import time: tasks import this package

        self.task = self.task.lower()
        if self.task not in TASKS:
            fail("task", sorted(TASKS))
        for name in ("max_seq_length", "eval_batch_size", "doc_stride", "max_query_length", "max_answer_length",
                     "n_best", "log_interval"):
            if getattr(self, name) < 1:
                fail(name, "an integer >= 1")
        for name in ("max_steps", "eval_interval", "early_stopping_patience", "max_train_examples",
                     "max_eval_examples", "save_interval"):
            if getattr(self, name) < 0:
                fail(name, "an integer >= 0")
        if self.max_seq_length < 8:
            fail("max_seq_length", "at least 8 (room for special tokens and text)")
        if self.epochs <= 0 and self.max_steps == 0:
            fail("epochs", "> 0, or set --max_steps")
        if self.cls_dropout is not None and not 0.0 <= self.cls_dropout < 1.0:
            fail("cls_dropout", "a probability in [0, 1)")
        for name in ("sift_lambda", "sift_step_size", "sift_init_noise"):
            if getattr(self, name) <= 0:
                fail(name, "> 0")
        if self.pair_truncation not in ("longest_first", "official"):
            fail("pair_truncation", "longest_first, official")
        if self.attention_backend is not None and self.attention_backend not in ATTENTION_BACKENDS:
            fail("attention_backend", ", ".join(sorted(ATTENTION_BACKENDS)))
        if self.data_dir is None and self.train is None and self.dev is None:
            raise ValueError("give --data_dir, or --train / --dev files")
        if self.task == "custom" and not self.text_cols:
            raise ValueError("--task custom needs --text_cols (one or two column names, comma-separated)")
        if self.text_cols and not 1 <= len(self.text_column_list) <= 2:
            fail("text_cols", "one or two column names")
        if self.keep_checkpoints < 1:
            fail("keep_checkpoints", "an integer >= 1")
        self.seed_list  # a bad --seeds fails here, naming it

    @property
    def seed_list(self) -> list[int]:
        """The seeds of the runs: --seeds N counts up from --seed; a list is taken as it is."""
        spec = str(self.seeds).strip()
        try:
            if "," not in spec:
                count = int(spec)
                if count >= 1:
                    return list(range(self.seed, self.seed + count))
            else:
                seeds = [int(item) for item in spec.split(",") if item.strip()]
                if seeds and len(set(seeds)) == len(seeds):
                    return seeds
        except ValueError:
            pass
        raise ValueError(f"--seeds={self.seeds!r} is invalid; allowed: a number of runs >= 1, or a comma-separated "
                         f"list of different integer seeds (e.g. 1,2,3)")

    @property
    def text_column_list(self) -> list[str]:
        return [c.strip() for c in (self.text_cols or "").split(",") if c.strip()]

    @property
    def label_list(self) -> Optional[list[str]]:
        return [c.strip() for c in self.labels.split(",")] if self.labels else None


SECTIONS = {"run": TaskConfig, "optimizer": OptimizerConfig, "engine": EngineConfig}


@dataclass
class FinetuneConfig:
    """The sections of one run: ``run`` (the task), ``optimizer`` and ``engine`` (shared)."""
    run: TaskConfig
    optimizer: OptimizerConfig
    engine: EngineConfig
    recipe: Optional[dict] = None  # the recipe followed: name, why, each value with its source (finetune/recipes.py)

    @classmethod
    def create(cls, recipe: str = "none", **values) -> "FinetuneConfig":
        """From flat field values (flag names or their aliases), with finetuning's defaults,
        as the command line would give them: ``FinetuneConfig.create(task="sst-2", lr=1e-3, ...)``.
        ``recipe``: "auto" (the command line's default), a recipe name, or "none" (here the
        default: values given in code are taken as they are). A bad value raises ValueError naming it."""
        values = {CANONICAL.get(name, name): value for name, value in values.items()}
        unknown = sorted(set(values) - {f.name for section in SECTIONS.values() for f in dataclasses.fields(section)})
        if unknown:
            raise ValueError(f"unknown finetuning settings {unknown}")
        from . import recipes  # here: `python -m finetune.recipes` imports this package first
        name, why = recipes.choose(recipe, values.get("task"), values.get("model"))
        recipe_values = _recipe_defaults(name, values)
        sections = {}
        for section_name, section in SECTIONS.items():
            fields = {f.name for f in dataclasses.fields(section)}
            given = {**FINETUNE_DEFAULTS, **recipe_values, **values}
            sections[section_name] = section(**{k: v for k, v in given.items() if k in fields})
        return cls(**sections).with_recipe(name, why)

    def with_recipe(self, name: Optional[str], why: str) -> "FinetuneConfig":
        """Records the recipe (``name`` None: none) with which of its values held."""
        from . import recipes
        flat = {k: v for section in SECTIONS for k, v in dataclasses.asdict(getattr(self, section)).items()}
        self.recipe = {"name": name, "chosen": why, **(recipes.CATALOGUE[name].record(flat) if name else {})}
        return self

    def to_dict(self) -> dict:
        return {**{name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}, "recipe": self.recipe}


# Older flag names -> the field they set.
CANONICAL = {alias: f.name for section in SECTIONS.values() for f in dataclasses.fields(section)
             for alias in f.metadata.get("aliases", ())}


def _recipe_defaults(name: Optional[str], given: dict) -> dict:
    """The recipe's values that apply under ``given`` (flags and --config). Its global batch
    yields when both the micro-batch and the accumulation are given: they fix the batch."""
    from . import recipes
    values = dict(recipes.RECIPES[name]) if name else {}
    if given.get("micro_batch_size") and given.get("grad_accum"):
        values.pop("global_batch_size", None)
    return values


def _first_look(argv: list[str]) -> tuple[Optional[str], Optional[str], str, dict]:
    """(task, model, recipe, the config file's values) before the full parse: the recipe
    depends on the task and the model's size. Flags first, then the --config file."""
    peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name in ("task", "model", "recipe", "config", "micro_batch_size", "batch_size", "grad_accum",
                 "gradient_accumulation_steps"):
        peek.add_argument(f"--{name}")
    known = vars(peek.parse_known_args(argv)[0])
    from_file = {}
    if known["config"]:
        try:
            from_file = yaml.safe_load(Path(known["config"]).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            from_file = {}  # the full parse reports the unreadable file
        from_file = {CANONICAL.get(k, k): v for k, v in from_file.items()} if isinstance(from_file, dict) else {}
    given = {**from_file, **{CANONICAL.get(k, k): v for k, v in known.items() if v is not None}}
    return given.get("task"), given.get("model"), given.get("recipe") or "auto", given


def build_command(argv: Optional[list[str]] = None) -> tuple[Command, Optional[str], str]:
    """The command, with the recipe's values as defaults; also (recipe name or None, why)."""
    from . import recipes
    argv = list(sys.argv[1:] if argv is None else argv)
    command = Command("deberta-finetune", "Finetune a DeBERTa model folder on a task (one device, or many with "
                      "`deepspeed finetune/main.py`).", SECTIONS, defaults=FINETUNE_DEFAULTS,
                      extra={"recipe": dict(type=str, default=recipes.AUTO,
                                            help="auto (from --task and the model's size), a recipe name "
                                                 "(python -m finetune.recipes lists them) or none"),
                             "local_rank": dict(type=int, default=-1, help=argparse.SUPPRESS)})
    task, model, requested, given = _first_look(argv)
    try:
        name, why = recipes.choose(requested, task, model)
    except ValueError as error:
        command.parser.error(str(error))
    command.set_defaults(_recipe_defaults(name, given))
    return command, name, why


def parse_args(argv: Optional[list[str]] = None) -> FinetuneConfig:
    argv = list(sys.argv[1:] if argv is None else argv)
    command, name, why = build_command(argv)
    return FinetuneConfig(**command.parse(argv)).with_recipe(name, why)

