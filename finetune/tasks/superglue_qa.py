"""SuperGLUE's reading-comprehension tasks, scored per answer candidate and grouped back.

MultiRC: every answer option of a question is a pair (paragraph, question + option),
classified true or false on its own; F1a pools every option, EM asks every option of a
question to be right. The submission nests the labels as the file does: paragraph
``idx`` > ``passage.questions[].idx`` > ``answers[].idx`` with ``label`` 0 or 1.

ReCoRD: the candidates of a query are the distinct entity texts of its passage
(``passage.entities``, character spans with an inclusive end). Each candidate is written
into the query's ``@placeholder`` and the pair (passage, filled query) is classified
"is the answer" or not; the candidate with the highest log-odds answers the query. A
training candidate is positive when its text is one of the query's gold answers. The
submission has the query ``idx`` and the entity text as ``label``. Compared with the
authors' one-pass span scorer this runs the passage once per candidate (about 14 per
query in the official data): more compute, no new head.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..data import DataError, Split, TruncationCounter, read_table
from .base import register
from .superglue import BOOLEAN, Labels, SuperGlueTask, require, write_jsonl
from .superglue_metrics import multirc_metrics, record_metrics

PLACEHOLDER = "@placeholder"


class CandidateTask(SuperGlueTask):
    """A binary classifier over (context, candidate) pairs; examples group the candidates.

    A pair over --max_seq_length always loses the end of its context (not as
    --pair_truncation official, which would cut each candidate's copy differently): every
    candidate of a question is scored against the same passage."""

    head = "sequence_classification"

    def _pair(self, counter: TruncationCounter, first: list[int], second_text: str) -> dict:
        second = self.tokenizer.encode(second_text)
        counter.add(len(first) + len(second) + 3)
        return self.tokenizer.build_inputs(first, second, self.config.max_seq_length)

    @staticmethod
    def grouped(split: Split, outputs: list[np.ndarray], sizes: list[int]) -> list[np.ndarray]:
        """Per example, the log-odds of "yes" of each of its candidates, in order."""
        odds = np.asarray([o[1] - o[0] for o in outputs], dtype=np.float64)
        bounds = np.cumsum([0] + sizes)
        if bounds[-1] != len(odds):
            raise ValueError(f"{split.name}: {len(odds)} outputs for {bounds[-1]} candidates")
        return [odds[bounds[i]:bounds[i + 1]] for i in range(len(sizes))]


@dataclass
class MultiRCQuestion:
    paragraph_idx: Any
    idx: Any
    answer_ids: list
    labels: Optional[list[int]]


@register("multirc")
class MultiRCTask(CandidateTask):
    labels = Labels((0, 1), (0, 1))
    metrics = ("f1a", "em")
    submission = "MultiRC"

    def load(self, name: str, path: Path, labelled: bool) -> Split:
        counter = TruncationCounter(path, self.config.max_seq_length)
        features, questions = [], []
        for number, row in enumerate(read_table(path)):
            passage = row.get(path, "passage")
            paragraph = self.tokenizer.encode(str(require(path, row.line, passage, "text", "passage.")))
            for q, question in enumerate(require(path, row.line, passage, "questions", "passage.")):
                where = f"passage.questions[{q}]."
                text = str(require(path, row.line, question, "question", where))
                answers = require(path, row.line, question, "answers", where)
                entry = MultiRCQuestion(row.values.get("idx", number), question.get("idx", q), [],
                                        [] if labelled else None)
                for a, answer in enumerate(answers):
                    answer_text = str(require(path, row.line, answer, "text", f"{where}answers[{a}]."))
                    feature = self._pair(counter, paragraph, f"{text} {answer_text}")
                    feature["_example"] = len(questions)
                    if labelled:
                        label = self.labels.index(path, row.line,
                                                  require(path, row.line, answer, "label", f"{where}answers[{a}]."))
                        feature["labels"] = label
                        entry.labels.append(label)
                    entry.answer_ids.append(answer.get("idx", a))
                    features.append(feature)
                questions.append(entry)
        return Split(name, path, features, questions, labelled, [m for m in [counter.report()] if m])

    def score(self, split: Split, outputs: list[np.ndarray]):
        odds = self.grouped(split, outputs, [len(q.answer_ids) for q in split.examples])
        predicted = [[int(o > 0) for o in question_odds] for question_odds in odds]
        if not split.has_labels:
            return {}, predicted
        return multirc_metrics(predicted, [q.labels for q in split.examples]), predicted

    def write_predictions(self, split: Split, predicted, folder: Path) -> Path:
        """The submission's nesting; an evaluated split also has each option's gold ``gold``."""
        paragraphs: dict[Any, list] = {}
        for question, labels in zip(split.examples, predicted):
            answers = [{"idx": a, "label": p, **({"gold": question.labels[i]} if split.has_labels else {})}
                       for i, (a, p) in enumerate(zip(question.answer_ids, labels))]
            paragraphs.setdefault(question.paragraph_idx, []).append({"idx": question.idx, "answers": answers})
        records = [{"idx": p, "passage": {"questions": qs}} for p, qs in paragraphs.items()]
        submission = self.submission_name(split)
        return write_jsonl(folder / (f"{submission}.jsonl" if submission else f"predictions_{split.name}.jsonl"),
                           records)


@dataclass
class RecordQuery:
    idx: Any
    candidates: list[str]
    answers: Optional[list[str]]


def entity_texts(path: Path, line: int, text: str, entities: list) -> list[str]:
    """The distinct entity strings of a passage, in order of first mention."""
    seen: dict[str, None] = {}
    for e, entity in enumerate(entities):
        start = require(path, line, entity, "start", f"passage.entities[{e}].")
        end = require(path, line, entity, "end", f"passage.entities[{e}].")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end < len(text)):
            raise DataError(f"{path}, line {line}: passage.entities[{e}] ({start!r}, {end!r}) is not a span of the "
                            f"passage ({len(text)} characters; the end is inclusive)")
        seen.setdefault(text[start:end + 1], None)
    return list(seen)


@register("record")
class RecordTask(CandidateTask):
    labels = BOOLEAN
    metrics = ("f1", "em")
    submission = "ReCoRD"

    def load(self, name: str, path: Path, labelled: bool) -> Split:
        counter = TruncationCounter(path, self.config.max_seq_length)
        features, queries = [], []
        for row in read_table(path):
            passage = row.get(path, "passage")
            text = str(require(path, row.line, passage, "text", "passage."))
            candidates = entity_texts(path, row.line, text, require(path, row.line, passage, "entities", "passage."))
            passage_ids = self.tokenizer.encode(text)
            for q, qa in enumerate(row.get(path, "qas")):
                query = str(require(path, row.line, qa, "query", f"qas[{q}]."))
                if PLACEHOLDER not in query:
                    raise DataError(f"{path}, line {row.line}: qas[{q}].query has no {PLACEHOLDER}")
                answers = None
                if labelled:
                    answers = [str(require(path, row.line, a, "text", f"qas[{q}].answers[{i}]."))
                               for i, a in enumerate(require(path, row.line, qa, "answers", f"qas[{q}]."))]
                for candidate in candidates:
                    feature = self._pair(counter, passage_ids, query.replace(PLACEHOLDER, candidate))
                    feature["_example"] = len(queries)
                    if labelled:
                        feature["labels"] = int(candidate in answers)
                    features.append(feature)
                queries.append(RecordQuery(require(path, row.line, qa, "idx", f"qas[{q}]."), candidates, answers))
        return Split(name, path, features, queries, labelled, [m for m in [counter.report()] if m])

    def score(self, split: Split, outputs: list[np.ndarray]):
        odds = self.grouped(split, outputs, [len(q.candidates) for q in split.examples])
        # A passage without entities leaves its queries unanswered (scored 0).
        predicted = [q.candidates[int(np.argmax(o))] if len(o) else "" for q, o in zip(split.examples, odds)]
        if not split.has_labels:
            return {}, predicted
        return record_metrics(predicted, [q.answers for q in split.examples]), predicted

    def write_predictions(self, split: Split, predicted, folder: Path) -> Path:
        submission = self.submission_name(split)
        if submission:
            return write_jsonl(folder / f"{submission}.jsonl",
                               [{"idx": q.idx, "label": p} for q, p in zip(split.examples, predicted)])
        return write_jsonl(folder / f"predictions_{split.name}.jsonl",
                           [{"idx": q.idx, "prediction": p, "answers": q.answers}
                            for q, p in zip(split.examples, predicted)])
