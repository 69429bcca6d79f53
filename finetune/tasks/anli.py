"""Adversarial NLI (ANLI v1.0): three rounds of premise / hypothesis classification.

``--data_dir`` is the official ``anli_v1.0`` folder, ``R1/``, ``R2/``, ``R3/`` each with
``train.jsonl``, ``dev.jsonl`` and ``test.jsonl`` (fields ``uid``, ``context``,
``hypothesis``, ``label`` in ``e`` / ``n`` / ``c``). ``--task anli`` trains on the three
rounds together and scores the combined dev and test sets; ``anli-r1``, ``anli-r2``,
``anli-r3`` use one round (``--data_dir`` may then also be the round's own folder).
Both dev and test are labelled and evaluated; dev picks ``best/``. Metrics: ``accuracy``
over every example of the split and, for ``anli``, ``accuracy_r1`` .. ``accuracy_r3``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deberta.atomic import atomic_write

from .. import metrics as M
from ..data import DataError, Split, TruncationCounter, read_table
from .base import Task, register
from .superglue import pair_features

ROUNDS = ("R1", "R2", "R3")
LABELS = ("e", "n", "c")  # entailment, neutral, contradiction, as the files spell them


@dataclass
class Pair:
    uid: str
    round: str
    label: int | None


@register("anli", "anli-r1", "anli-r2", "anli-r3")
class AnliTask(Task):
    head = "sequence_classification"
    default_files = {"train": "train", "dev": "dev", "test": "test"}
    metrics = ("accuracy",)

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.rounds = ROUNDS if config.task == "anli" else (config.task[-2:].upper(),)

    @property
    def num_labels(self) -> int:
        return len(LABELS)

    def metadata(self) -> dict:
        return {**super().metadata(), "labels": list(LABELS), "rounds": list(self.rounds)}

    # --- files: a split is a folder of rounds, or one .jsonl file ---------------------------
    def _data_path(self, split: str) -> Path | None:
        return Path(self.config.data_dir) if self.config.data_dir and split in self.default_files else None

    def _round_files(self, split: str, path: Path) -> list[tuple[str, Path]]:
        if path.is_file():
            return [(path.parent.name if path.parent.name in ROUNDS else self.rounds[0], path)]
        files = []
        for round_name in self.rounds:
            candidates = [path / round_name / f"{split}.jsonl"]
            if len(self.rounds) == 1:
                candidates.append(path / f"{split}.jsonl")  # the round's own folder
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise DataError(f"ANLI {round_name} {split} file not found (looked for "
                                f"{[str(c) for c in candidates]})")
            files.append((round_name, found))
        return files

    def eval_files(self) -> dict[str, Path]:
        if self.config.dev:
            return {"dev": Path(self.config.dev)}
        files = {"dev": self._data_path("dev")}
        if files["dev"] is None:
            raise DataError("give --data_dir (the anli_v1.0 folder) or --dev")
        try:
            self._round_files("test", files["dev"])
            files["test"] = files["dev"]  # ANLI's test sets are labelled: scored like dev
        except DataError:
            pass  # no test files: dev only
        return files

    def test_files(self) -> dict[str, Path]:
        return {"test": Path(self.config.test)} if self.config.test else {}

    # --- reading and scoring --------------------------------------------------------------
    def load(self, name: str, path: Path, labelled: bool) -> Split:
        counter = TruncationCounter(path, self.config.max_seq_length)
        index = {label: i for i, label in enumerate(LABELS)}
        features, pairs = [], []
        for round_name, file in self._round_files(name, path):
            for row in read_table(file):
                context = self.tokenizer.encode(str(row.get(file, "context")))
                hypothesis = self.tokenizer.encode(str(row.get(file, "hypothesis")))
                counter.add(len(context) + len(hypothesis) + 3)
                feature = pair_features(self, context, hypothesis, file, row.line)
                label = None
                if labelled:
                    value = str(row.get(file, "label")).strip()
                    if value not in index:
                        raise DataError(f"{file}, line {row.line}: label {value!r} is not one of {list(LABELS)}")
                    label = feature["labels"] = index[value]
                features.append(feature)
                pairs.append(Pair(str(row.get(file, "uid")), round_name, label))
        return Split(name, path, features, pairs, labelled, [m for m in [counter.report()] if m])

    def score(self, split: Split, outputs: list[np.ndarray]):
        predicted = np.stack(outputs).argmax(-1)
        if not split.has_labels:
            return {}, predicted
        golds = np.asarray([p.label for p in split.examples])
        results = {"accuracy": M.accuracy(predicted, golds)}
        rounds = sorted({p.round for p in split.examples})
        if len(rounds) > 1:
            for round_name in rounds:
                ids = [i for i, p in enumerate(split.examples) if p.round == round_name]
                results[f"accuracy_{round_name.lower()}"] = M.accuracy(predicted[ids], golds[ids])
        return results, predicted

    def write_predictions(self, split: Split, predicted, folder: Path) -> Path:
        records = [{"uid": p.uid, "round": p.round, "prediction": LABELS[k],
                    **({"label": LABELS[p.label]} if split.has_labels else {})}
                   for p, k in zip(split.examples, predicted)]
        return atomic_write(folder / f"predictions_{split.name}.jsonl",
                            "".join(json.dumps(r) + "\n" for r in records))
