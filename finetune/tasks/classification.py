"""Sentence and sentence-pair classification or regression: the GLUE tasks and custom tables."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .. import metrics as M
from ..data import (DataError, Row, Split, TruncationCounter, read_table, require_columns, truncate_official,
                    truncation_rng, write_tsv)
from ..sift import squared_difference
from .base import Task, register


@dataclass(frozen=True)
class TableSpec:
    """Where a table keeps its texts and label, and how the task is scored."""

    text_columns: tuple[str, ...]
    label_column: str
    labels: Optional[tuple[str, ...]]  # None: regression
    metrics: tuple[str, ...]
    submission_names: tuple[tuple[str, str], ...] = ()  # test split -> GLUE submission file stem
    headerless_columns: Optional[tuple[str, ...]] = None  # names for files without a header (CoLA)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
GLUE = {
    "cola": TableSpec(("sentence",), "label", _BINARY, ("mcc", "accuracy"), (("test", "CoLA"),),
                      headerless_columns=("source", "label", "original_label", "sentence")),
    "sst-2": TableSpec(("sentence",), "label", _BINARY, ("accuracy",), (("test", "SST-2"),)),
    "mrpc": TableSpec(("#1 String", "#2 String"), "Quality", _BINARY, ("f1", "accuracy"), (("test", "MRPC"),)),
    "sts-b": TableSpec(("sentence1", "sentence2"), "score", None, ("pearson", "spearman"), (("test", "STS-B"),)),
    "qqp": TableSpec(("question1", "question2"), "is_duplicate", _BINARY, ("accuracy", "f1"), (("test", "QQP"),)),
    "mnli": TableSpec(("sentence1", "sentence2"), "gold_label", ("contradiction", "entailment", "neutral"),
                      ("accuracy",), (("test_matched", "MNLI-m"), ("test_mismatched", "MNLI-mm"))),
    "qnli": TableSpec(("question", "sentence"), "label", _NLI2, ("accuracy",), (("test", "QNLI"),)),
    "rte": TableSpec(("sentence1", "sentence2"), "label", _NLI2, ("accuracy",), (("test", "RTE"),)),
    "wnli": TableSpec(("sentence1", "sentence2"), "label", _BINARY, ("accuracy",), (("test", "WNLI"),)),
}
MNLI_FILES = {"train": "train.tsv", "dev_matched": "dev_matched.tsv", "dev_mismatched": "dev_mismatched.tsv",
              "test_matched": "test_matched.tsv", "test_mismatched": "test_mismatched.tsv"}


@dataclass
class Prediction:
    index: str
    prediction: str
    label: Optional[str]


class TableClassificationTask(Task):
    """One or two text columns and a label column; a classifier or (no label set) a regressor."""

    def __init__(self, config, tokenizer, spec: TableSpec):
        super().__init__(config, tokenizer)
        self.spec = spec
        self.metrics = spec.metrics
        self.labels = list(spec.labels) if spec.labels is not None else None

    @property
    def num_labels(self) -> int:
        return 1 if self.spec.is_regression else len(self.labels)

    def metadata(self) -> dict:
        return {**super().metadata(), "labels": self.labels}

    # --- reading ------------------------------------------------------------------------
    def _rows(self, path: Path, labelled: bool) -> list[Row]:
        headerless = self.spec.headerless_columns if labelled else None
        rows = read_table(path, list(headerless) if headerless else None)
        require_columns(path, rows, list(self.spec.text_columns) + ([self.spec.label_column] if labelled else []))
        return rows

    def _label(self, path: Path, row: Row):
        value = row.get(path, self.spec.label_column)
        if self.spec.is_regression:
            try:
                return float(value)
            except (TypeError, ValueError):
                raise DataError(f"{path}, line {row.line}: label {value!r} in column "
                                f"{self.spec.label_column!r} is not a number") from None
        text = str(value).strip()
        if text not in self._label_index:
            raise DataError(f"{path}, line {row.line}: label {text!r} is not one of the labels {self.labels}")
        return self._label_index[text]

    @property
    def _label_index(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def load(self, name: str, path: Path, labelled: bool) -> Split:
        rows = self._rows(path, labelled)
        counter = TruncationCounter(path, self.config.max_seq_length)
        features, examples = [], []
        for number, row in enumerate(rows):
            texts = [str(row.get(path, c)) for c in self.spec.text_columns]
            first = self.tokenizer.encode(texts[0])
            second = self.tokenizer.encode(texts[1]) if len(texts) > 1 else None
            counter.add(len(first) + (len(second) + 3 if second is not None else 2))
            if self.config.pair_truncation == "official":  # else build_inputs cuts longest-first
                special = 2 if second is None else 3
                truncate_official([s for s in (first, second) if s is not None],
                                  self.config.max_seq_length - special,
                                  truncation_rng(self.config.seed, path, row.line))
            feature = self.tokenizer.build_inputs(first, second, self.config.max_seq_length)
            label = self._label(path, row) if labelled else None
            if labelled:
                feature["labels"] = label
            features.append(feature)
            index = row.values.get("index", row.values.get("id", number))
            examples.append((str(index), label))
        return Split(name, path, features, examples, labelled, [m for m in [counter.report()] if m])

    # --- scoring ------------------------------------------------------------------------
    def score(self, split: Split, outputs: list[np.ndarray]):
        logits = np.stack(outputs)
        if self.spec.is_regression:
            predicted = logits[:, 0]
            shown = [f"{v:.4f}" for v in predicted]
        else:
            predicted = logits.argmax(-1)
            shown = [self.labels[i] for i in predicted]
        golds = [label for _, label in split.examples]
        predictions = [Prediction(index, text, None if gold is None else
                                  (f"{gold:g}" if self.spec.is_regression else self.labels[gold]))
                       for (index, _), text, gold in zip(split.examples, shown, golds)]
        if not split.has_labels:
            return {}, predictions
        if self.spec.is_regression:
            return M.regression_metrics(predicted, golds), predictions
        return M.classification_metrics(predicted, np.asarray(golds), self.metrics), predictions

    def write_predictions(self, split: Split, predictions: list[Prediction], folder: Path) -> Path:
        """Evaluated splits: index, prediction, label. Test splits: GLUE's submission format."""
        submission = dict(self.spec.submission_names).get(split.name)
        name = f"{submission}.tsv" if submission and not split.has_labels else f"predictions_{split.name}.tsv"
        path = folder / name
        header = ["index", "prediction"] + (["label"] if split.has_labels else [])
        return write_tsv(path, [header] + [[p.index, p.prediction] + ([p.label] if split.has_labels else [])
                                           for p in predictions])

    def divergence(self, perturbed, clean, batch):
        if self.spec.is_regression:  # one real output: no distribution to compare
            return squared_difference(perturbed, clean)
        return super().divergence(perturbed, clean, batch)


@register(*GLUE)
class GlueTask(TableClassificationTask):
    """A GLUE task read from its standard folder (train.tsv, dev.tsv, test.tsv)."""

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer, GLUE[config.task])
        if config.task == "mnli":
            self.default_files = MNLI_FILES


@register("custom")
class CustomTask(TableClassificationTask):
    """Any TSV / CSV / JSON-lines table: --text_cols a[,b] --label_col y [--regression] [--labels ...]."""

    def __init__(self, config, tokenizer):
        regression = config.regression
        metrics = ("pearson", "spearman", "mse") if regression else ("accuracy", "f1_macro", "mcc")
        labels = None if regression else tuple(config.label_list or ())
        spec = TableSpec(tuple(config.text_column_list), config.label_col, labels, metrics)
        super().__init__(config, tokenizer, spec)

    def prepare(self, train_path: Path) -> None:
        """Without --labels, the label set is the training file's labels, sorted."""
        if self.spec.is_regression or self.labels:
            return
        rows = self._rows(train_path, labelled=True)
        self.labels = sorted({str(row.get(train_path, self.spec.label_column)).strip() for row in rows})
        if len(self.labels) < 2:
            raise DataError(f"{train_path}: column {self.spec.label_column!r} has a single label {self.labels}; "
                            f"classification needs two or more (or pass --regression)")
