"""Multiple-choice reading comprehension in the RACE format.

A split is a folder of RACE documents (``train/high/1.txt``, ... each a JSON object with
``article``, ``questions``, ``options`` and ``answers`` letters) or one JSON-lines file
of such objects. Each option becomes one input, ``[CLS] article [SEP] question option
[SEP]`` (a question with a blank ``_`` gets the option written into it), and the model
scores the options against each other.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import metrics as M
from ..data import DataError, Split, TruncationCounter, write_tsv
from .base import Task, register

LETTERS = "ABCDEFGHIJ"


@dataclass
class Question:
    qid: str
    article: str
    question: str
    options: list[str]
    answer: int | None


def _documents(path: Path):
    """(where, document) pairs from a folder of RACE files or a JSON-lines file."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".json"))
        if not files:
            raise DataError(f"{path}: no RACE .txt/.json documents in this folder")
        for file in files:
            try:
                yield str(file), json.loads(file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise DataError(f"{file}: not valid JSON ({error})") from None
    elif path.is_file():
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield f"{path}, line {number}", json.loads(line)
                    except json.JSONDecodeError as error:
                        raise DataError(f"{path}, line {number}: not valid JSON ({error})") from None
    else:
        raise DataError(f"{path}: not found (a folder of RACE documents or a .jsonl file)")


def read_race(path: Path, labelled: bool) -> list[Question]:
    questions = []
    for where, document in _documents(path):
        for key in ("article", "questions", "options") + (("answers",) if labelled else ()):
            if key not in document:
                raise DataError(f"{where}: no {key!r} field")
        if len(document["options"]) != len(document["questions"]):
            raise DataError(f"{where}: {len(document['questions'])} questions but {len(document['options'])} "
                            f"option lists")
        doc_id = str(document.get("id", Path(where.split(",")[0]).stem))
        for i, (question, options) in enumerate(zip(document["questions"], document["options"])):
            answer = None
            if labelled:
                letter = str(document["answers"][i]).strip().upper()
                if letter not in LETTERS[:len(options)]:
                    raise DataError(f"{where}: question {i}: answer {letter!r} is not one of "
                                    f"{list(LETTERS[:len(options)])}")
                answer = LETTERS.index(letter)
            questions.append(Question(f"{doc_id}-{i}", document["article"], question, list(options), answer))
    if not questions:
        raise DataError(f"{path}: no questions")
    n_options = len(questions[0].options)
    for q in questions:
        if len(q.options) != n_options:
            raise DataError(f"{path}: question {q.qid} has {len(q.options)} options, others {n_options}; "
                            f"every question of a split needs the same number")
    return questions


@register("race")
class RaceTask(Task):
    head = "multiple_choice"
    default_files = {"train": "train", "dev": "dev", "test": "test"}
    metrics = ("accuracy",)

    @property
    def num_labels(self) -> int:
        return 1  # one score per option

    def _data_path(self, split: str) -> Path | None:
        """The official folder (data_dir/train/...), else data_dir/train.jsonl."""
        folder = super()._data_path(split)
        if folder is None or folder.exists():
            return folder
        return folder.with_name(folder.name + ".jsonl")

    def load(self, name: str, path: Path, labelled: bool) -> Split:
        counter = TruncationCounter(path, self.config.max_seq_length)
        features, questions = [], read_race(path, labelled)
        articles: dict[str, list[int]] = {}
        for q in questions:
            article = articles.setdefault(q.article, self.tokenizer.encode(q.article))
            choices = []
            for option in q.options:
                text = q.question.replace("_", option) if "_" in q.question else f"{q.question} {option}"
                second = self.tokenizer.encode(text)
                counter.add(len(article) + len(second) + 3)
                choices.append(self.tokenizer.build_inputs(article, second, self.config.max_seq_length))
            feature = {key: [c[key] for c in choices] for key in choices[0]}
            if labelled:
                feature["labels"] = q.answer
            features.append(feature)
        return Split(name, path, features, questions, labelled, [m for m in [counter.report()] if m])

    def score(self, split: Split, outputs: list[np.ndarray]):
        predicted = np.stack(outputs).argmax(-1)
        if not split.has_labels:
            return {}, predicted
        return {"accuracy": M.accuracy(predicted, [q.answer for q in split.examples])}, predicted

    def write_predictions(self, split: Split, predictions, folder: Path) -> Path:
        path = folder / f"predictions_{split.name}.tsv"
        header = ["id", "prediction"] + (["label"] if split.has_labels else [])
        return write_tsv(path, [header] + [[q.qid, LETTERS[p]] + ([LETTERS[q.answer]] if split.has_labels else [])
                                           for q, p in zip(split.examples, predictions)])
