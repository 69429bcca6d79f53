"""The finetuning configuration: one dataclass, checked on construction, and its command line.

Every field is a flag of the same name (``--learning_rate 2e-5``); booleans take
``--name`` / ``--no-name``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class FinetuneConfig:
    # --- what to train, on what -------------------------------------------------------
    task: str = field(metadata={"help": "task name: GLUE (cola, sst-2, mrpc, sts-b, qqp, mnli, qnli, rte, wnli), "
                                        "squad, squad2, race, ner, custom"})
    model: str = field(metadata={"help": "model folder (native, Hugging Face or official DeBERTa)"})
    output_dir: str = field(metadata={"help": "where eval_results.json, predictions and best/ go"})
    data_dir: Optional[str] = field(default=None, metadata={"help": "folder with the task's standard files"})
    train: Optional[str] = field(default=None, metadata={"help": "training file (overrides data_dir's)"})
    dev: Optional[str] = field(default=None, metadata={"help": "evaluation file (overrides data_dir's)"})
    test: Optional[str] = field(default=None, metadata={"help": "unlabelled file to predict"})
    # custom task
    text_cols: Optional[str] = field(default=None, metadata={
        "help": "custom: one or two text columns, comma-separated"})
    label_col: str = field(default="label", metadata={"help": "custom: the label column"})
    labels: Optional[str] = field(default=None, metadata={"help": "custom: label set, comma-separated "
                                                                  "(default: the training file's labels, sorted)"})
    regression: bool = field(default=False, metadata={"help": "custom: a real-valued label (MSE loss)"})
    # sequences
    max_seq_length: int = field(default=128, metadata={"help": "tokens per input, special tokens included"})
    doc_stride: int = field(default=128, metadata={"help": "squad: tokens between the starts of context windows"})
    max_query_length: int = field(default=64, metadata={"help": "squad: question tokens kept"})
    max_answer_length: int = field(default=30, metadata={"help": "squad: longest predicted answer in tokens"})
    n_best: int = field(default=20, metadata={"help": "squad: start/end candidates considered per window"})
    null_score_threshold: float = field(default=0.0, metadata={
        "help": "squad2: predict no answer when its score beats the best span by more than this"})
    max_train_examples: int = field(default=0, metadata={"help": "use only the first N training examples (0: all)"})
    max_eval_examples: int = field(default=0, metadata={"help": "evaluate only the first N examples (0: all)"})
    # optimisation
    epochs: float = field(default=3.0, metadata={"help": "training epochs"})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps; overrides epochs when > 0"})
    batch_size: int = field(default=32, metadata={"help": "examples per device per micro-batch"})
    eval_batch_size: int = field(default=64, metadata={"help": "examples per device when evaluating"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-6
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of the steps with linear warm-up"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: none)"})
    cls_dropout: Optional[float] = field(default=None, metadata={"help": "classifier dropout (default: the model's)"})
    precision: str = field(default="fp32", metadata={"help": f"{PRECISIONS}; DeepSpeed runs take it from --ds_config"})
    seed: int = 42
    # SiFT
    sift: bool = field(default=False, metadata={"help": "virtual adversarial training on normalised embeddings"})
    sift_lambda: float = field(default=1.0, metadata={"help": "weight of the adversarial loss"})
    sift_step_size: float = field(default=1e-4, metadata={"help": "ascent step of the perturbation"})
    sift_init_noise: float = field(default=1e-2, metadata={"help": "std of the initial perturbation"})
    # evaluation and bookkeeping
    eval_steps: int = field(default=0, metadata={"help": "evaluate every N optimizer steps (0: each epoch)"})
    metric_for_best: Optional[str] = field(default=None, metadata={"help": "default: the task's main metric"})
    early_stopping_patience: int = field(default=0, metadata={
        "help": "stop after N evaluations without improvement (0: never)"})
    save_best: bool = field(default=True, metadata={"help": "write the best model to OUTPUT/best"})
    logging_steps: int = 50
    tensorboard: bool = True
    progress_bar: bool = True
    ds_config: Optional[str] = field(default=None, metadata={"help": "DeepSpeed JSON config: train with DeepSpeed"})
    local_rank: int = field(default=-1, metadata={"help": "set by the deepspeed launcher"})

    def __post_init__(self):
        def fail(name, allowed):
            raise ValueError(f"--{name}={getattr(self, name)!r} is invalid; allowed: {allowed}")

        from .tasks import TASKS  # here, not at import time: tasks import this module

        self.task = self.task.lower()
        if self.task not in TASKS:
            fail("task", sorted(TASKS))
        for name in ("max_seq_length", "batch_size", "eval_batch_size", "gradient_accumulation_steps",
                     "doc_stride", "max_query_length", "max_answer_length", "n_best", "logging_steps"):
            if getattr(self, name) < 1:
                fail(name, "an integer >= 1")
        for name in ("max_steps", "eval_steps", "early_stopping_patience", "max_train_examples",
                     "max_eval_examples"):
            if getattr(self, name) < 0:
                fail(name, "an integer >= 0")
        if self.max_seq_length < 8:
            fail("max_seq_length", "at least 8 (room for special tokens and text)")
        if self.epochs <= 0 and self.max_steps == 0:
            fail("epochs", "> 0, or set --max_steps")
        if self.learning_rate <= 0:
            fail("learning_rate", "> 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            fail("warmup_ratio", "a fraction in [0, 1)")
        if self.precision not in PRECISIONS:
            fail("precision", PRECISIONS)
        if self.cls_dropout is not None and not 0.0 <= self.cls_dropout < 1.0:
            fail("cls_dropout", "a probability in [0, 1)")
        for name in ("sift_lambda", "sift_step_size", "sift_init_noise"):
            if getattr(self, name) <= 0:
                fail(name, "> 0")
        if self.data_dir is None and self.train is None and self.dev is None:
            raise ValueError("give --data_dir, or --train / --dev files")
        if self.task == "custom" and not self.text_cols:
            raise ValueError("--task custom needs --text_cols (one or two column names, comma-separated)")
        if self.text_cols and not 1 <= len(self.text_column_list) <= 2:
            fail("text_cols", "one or two column names")
        if self.ds_config is not None and not Path(self.ds_config).is_file():
            raise ValueError(f"--ds_config {self.ds_config}: file not found")

    @property
    def text_column_list(self) -> list[str]:
        return [c.strip() for c in (self.text_cols or "").split(",") if c.strip()]

    @property
    def label_list(self) -> Optional[list[str]]:
        return [c.strip() for c in self.labels.split(",")] if self.labels else None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, folder: Path) -> None:
        (folder / "finetune_config.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m finetune",
                                     description="Finetune a DeBERTa model folder on a task.")
    for f in dataclasses.fields(FinetuneConfig):
        help_text = f.metadata.get("help", "")
        # The dashed spelling too: the deepspeed launcher passes --local-rank.
        flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        if f.type in (bool, "bool"):
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=f.default,
                                help=help_text)
            continue
        required = f.default is dataclasses.MISSING
        kind = {"int": int, "float": float, "Optional[float]": float}.get(str(f.type), str)
        parser.add_argument(*flags, dest=f.name, type=kind, required=required,
                            default=None if required else f.default, help=help_text)
    return parser


def parse_args(argv=None) -> FinetuneConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return FinetuneConfig(**vars(args))
    except ValueError as error:
        parser.error(str(error))
