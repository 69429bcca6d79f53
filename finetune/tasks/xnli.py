"""XNLI: finetune on English MNLI, evaluate every XNLI language (zero-shot cross-lingual transfer).

Training reads MNLI's GLUE ``train.tsv`` exactly as ``--task mnli`` does (``--train
glue/MNLI/train.tsv``, or a ``train.tsv`` in ``--data_dir``). Evaluation reads the
official XNLI 1.0 files in ``--data_dir``: ``xnli.dev.tsv`` (model selection) and
``xnli.test.tsv`` (labelled, so scored too), with columns ``language``, ``gold_label``,
``sentence1``, ``sentence2`` and ``pairID``. Per-language files with the same columns
(``language`` optional) work as well: ``dev-de.tsv``, ``test-de.tsv``, ... in
``--data_dir``, the language taken from the name.

Metrics per split: ``accuracy``, the average of the per-language accuracies (the figure
papers report, 15 languages), and ``accuracy_<lang>`` for each language. ``best/`` is
chosen on the average dev accuracy; ``--metric_for_best accuracy_en`` selects on English
alone (strict zero-shot). Any model folder works; a multilingual one (mDeBERTa-v3)
is what transfers.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import metrics as M
from ..data import DataError, Split, TruncationCounter, read_table, require_columns, write_tsv
from .base import register
from .classification import GLUE, TableClassificationTask
from .superglue import pair_features


@dataclass
class Pair:
    index: str
    language: str
    label: int | None


@register("xnli")
class XnliTask(TableClassificationTask):
    default_files = {"train": "train.tsv", "dev": "xnli.dev.tsv", "test": "xnli.test.tsv"}

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer, GLUE["mnli"])  # MNLI's columns and label set

    def train_file(self) -> Path:
        path = Path(self.config.train) if self.config.train else self._data_path("train")
        if path is None or not path.is_file():
            raise DataError(f"MNLI training file not found: {path} (give --train glue/MNLI/train.tsv, or put "
                            f"MNLI's train.tsv in --data_dir)")
        return path

    def _xnli_path(self, split: str) -> Path | None:
        """The combined official file, else the folder when it holds per-language files."""
        if self.config.data_dir is None:
            return None
        folder = Path(self.config.data_dir)
        combined = folder / self.default_files[split]
        if combined.is_file():
            return combined
        return folder if any(folder.glob(f"{split}-*.tsv")) else None

    def eval_files(self) -> dict[str, Path]:
        if self.config.dev:
            return {"dev": Path(self.config.dev)}
        files = {split: self._xnli_path(split) for split in ("dev", "test")}
        if files["dev"] is None:
            raise DataError(f"no XNLI dev file in {self.config.data_dir} (xnli.dev.tsv, or dev-<lang>.tsv per "
                            f"language); give --data_dir or --dev")
        return {split: path for split, path in files.items() if path is not None}

    def test_files(self) -> dict[str, Path]:
        return {"test": Path(self.config.test)} if self.config.test else {}  # XNLI's test set is evaluated

    def _language_files(self, name: str, path: Path) -> list[tuple[Path, str | None]]:
        if path.is_dir():
            return [(file, file.stem.split("-", 1)[1]) for file in sorted(path.glob(f"{name}-*.tsv"))]
        return [(path, None)]

    def load(self, name: str, path: Path, labelled: bool) -> Split:
        if name == "train":
            return super().load(name, path, labelled)
        counter = TruncationCounter(path, self.config.max_seq_length)
        features, pairs = [], []
        for file, file_language in self._language_files(name, path):
            rows = read_table(file)
            require_columns(file, rows, list(self.spec.text_columns) + ([] if file_language else ["language"])
                            + ([self.spec.label_column] if labelled else []))
            for number, row in enumerate(rows):
                first, second = (self.tokenizer.encode(str(row.get(file, c))) for c in self.spec.text_columns)
                counter.add(len(first) + len(second) + 3)
                feature = pair_features(self, first, second, file, row.line)
                label = self._label(file, row) if labelled else None
                if labelled:
                    feature["labels"] = label
                features.append(feature)
                language = file_language or str(row.get(file, "language")).strip()
                pairs.append(Pair(str(row.values.get("pairID", number)), language, label))
        return Split(name, path, features, pairs, labelled, [m for m in [counter.report()] if m])

    def score(self, split: Split, outputs: list[np.ndarray]):
        if not split.examples or not isinstance(split.examples[0], Pair):  # the MNLI training file
            return super().score(split, outputs)
        predicted = np.stack(outputs).argmax(-1)
        if not split.has_labels:
            return {}, predicted
        by_language: dict[str, list[int]] = defaultdict(list)
        for i, pair in enumerate(split.examples):
            by_language[pair.language].append(i)
        golds = np.asarray([p.label for p in split.examples])
        per_language = {f"accuracy_{lang}": M.accuracy(predicted[ids], golds[ids])
                        for lang, ids in sorted(by_language.items())}
        return {"accuracy": float(np.mean(list(per_language.values()))), **per_language}, predicted

    def write_predictions(self, split: Split, predicted, folder: Path) -> Path:
        if not split.examples or not isinstance(split.examples[0], Pair):
            return super().write_predictions(split, predicted, folder)
        header = ["language", "pairID", "prediction"] + (["label"] if split.has_labels else [])
        rows = [[p.language, p.index, self.labels[k]] + ([self.labels[p.label]] if split.has_labels else [])
                for p, k in zip(split.examples, predicted)]
        return write_tsv(folder / f"predictions_{split.name}.tsv", [header] + rows)
