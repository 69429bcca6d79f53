"""SuperGLUE from its official JSON-lines files: BoolQ, CB, COPA, RTE, WiC, WSC and the
AX-b / AX-g diagnostics (MultiRC and ReCoRD are in ``superglue_qa``).

Every task reads ``train.jsonl``, ``val.jsonl`` (evaluated) and ``test.jsonl`` (predicted)
in ``--data_dir``, one of the folders of the official download. A test split is written
as the leaderboard's submission file, ``<Task>.jsonl`` with ``idx`` and ``label`` spelled
as the leaderboard reads them (BoolQ and WiC ``"true"``/``"false"``, WSC ``"True"``/
``"False"``, COPA ``0``/``1``, the NLI tasks their label names); an evaluated split as
``predictions_<split>.jsonl`` with ``idx``, ``prediction`` and ``label``.

Heads: sentence pairs for BoolQ (passage, question), CB and RTE (premise, hypothesis);
multiple choice for COPA, whose pair is read in causal order: (premise, choice) when the
question asks for an effect, (choice, premise) when it asks for a cause. WiC and WSC are
span tasks solved with *marked spans*: the target word of each WiC sentence is wrapped in
``*``, WSC's candidate noun phrase in ``*`` and its pronoun in ``#``, and the sentence-pair
classifier reads the marked text. Markers need no new head and no new vocabulary, so every
model folder (native, Hugging Face, official) finetunes them as it is, with SiFT and ZeRO
alike, and the encoder's attention relates the marked occurrences directly. Punctuation
markers do as well as added marker tokens in relation classification (Zhou and Chen,
2021, "An Improved Baseline for Sentence-level Relation Extraction"). The markers stand
apart by spaces, so the marked word keeps the tokens it has in running text.

The diagnostics are predicted by a model finetuned on RTE: ``--task superglue-rte``
trains on RTE and also writes ``AX-b.jsonl`` and ``AX-g.jsonl`` when it finds the files
(``AX-b.jsonl`` in ``--data_dir``, or the official layout's sibling folder
``../AX-b/AX-b.jsonl``); ``--task ax-b`` / ``ax-g`` does the same for one diagnostic and
requires its file (``--test`` names it otherwise). A diagnostic file with labels is also
scored: AX-b by Matthews correlation, AX-g by gender parity and accuracy.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from deberta.atomic import atomic_write

from .. import metrics as M
from ..data import DataError, Row, Split, TruncationCounter, read_table, truncate_official, truncation_rng
from .base import Task, register
from .superglue_metrics import gender_parity


def require(path: Path, line: int, obj: Any, key: str, where: str = "") -> Any:
    """``obj[key]``, or an error naming the file, the line and the field (``where`` its parent)."""
    if not isinstance(obj, dict) or obj.get(key) is None:
        raise DataError(f"{path}, line {line}: no field {where + key!r}")
    return obj[key]


def pair_features(task: Task, first: list[int], second: Optional[list[int]], path: Path, line: int) -> dict:
    """``[CLS] first [SEP] second [SEP]``; an input over --max_seq_length is cut as
    --pair_truncation says (``official``: tokens from either end of the longest segment,
    drawn per file and line, as the GLUE tasks do). The lists may be shortened in place."""
    config = task.config
    if config.pair_truncation == "official":
        special = 2 if second is None else 3
        truncate_official([s for s in (first, second) if s is not None], config.max_seq_length - special,
                          truncation_rng(config.seed, path, line))
    return task.tokenizer.build_inputs(first, second, config.max_seq_length)


def _label_key(value):
    if isinstance(value, str):
        text = value.strip().lower()
        return {"true": True, "false": False}.get(text, text)
    return value


@dataclass(frozen=True)
class Labels:
    """A task's classes: the values its files hold, and how the leaderboard spells each."""

    values: tuple
    submitted: tuple

    def index(self, path: Path, line: int, value) -> int:
        key = _label_key(value)
        for i, known in enumerate(self.values):
            # Same type too: Python has True == 1, but a JSON 1 is no BoolQ label, nor true a COPA one.
            if type(_label_key(known)) is type(key) and _label_key(known) == key:
                return i
        raise DataError(f"{path}, line {line}: label {value!r} is not one of {list(self.values)}")


BOOLEAN = Labels((False, True), ("false", "true"))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    return atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


@dataclass
class Example:
    idx: Any
    label: Optional[int]
    pair_id: Any = None  # AX-g: the Winogender pair the example belongs to


class SuperGlueTask(Task):
    """The official file names, the label set, and the submission / predictions files."""

    default_files = {"train": "train.jsonl", "dev": "val.jsonl", "test": "test.jsonl"}
    labels: Labels = BOOLEAN
    submission = ""  # the leaderboard's file stem for the test split

    @property
    def num_labels(self) -> int:
        return len(self.labels.values)

    def metadata(self) -> dict:
        return {**super().metadata(), "labels": [str(label) for label in self.labels.submitted]}

    def submission_name(self, split: Split) -> Optional[str]:
        """The leaderboard file this split goes to; None for an evaluated split."""
        if split.name in DIAGNOSTICS:
            return DIAGNOSTICS[split.name].stem
        return self.submission if split.name == "test" and not split.has_labels else None

    def _label(self, path: Path, row: Row, labelled: bool) -> Optional[int]:
        return self.labels.index(path, row.line, row.get(path, "label")) if labelled else None

    def write_predictions(self, split: Split, predicted, folder: Path) -> Path:
        shown = self.labels.submitted
        submission = self.submission_name(split)
        if submission:
            return write_jsonl(folder / f"{submission}.jsonl",
                               [{"idx": e.idx, "label": shown[p]} for e, p in zip(split.examples, predicted)])
        return write_jsonl(folder / f"predictions_{split.name}.jsonl",
                           [{"idx": e.idx, "prediction": shown[p],
                             **({"label": shown[e.label]} if split.has_labels else {})}
                            for e, p in zip(split.examples, predicted)])


class SentencePairTask(SuperGlueTask):
    """One or two texts per line, one classifier over the classes."""

    head = "sequence_classification"

    def texts(self, path: Path, row: Row, split_name: str) -> tuple[str, Optional[str]]:
        raise NotImplementedError

    def load(self, name: str, path: Path, labelled: bool) -> Split:
        counter = TruncationCounter(path, self.config.max_seq_length)
        features, examples = [], []
        for number, row in enumerate(read_table(path)):
            first, second = self.texts(path, row, name)
            first_ids = self.tokenizer.encode(first)
            second_ids = self.tokenizer.encode(second) if second is not None else None
            counter.add(len(first_ids) + (len(second_ids) + 3 if second_ids is not None else 2))
            feature = pair_features(self, first_ids, second_ids, path, row.line)
            label = self._label(path, row, labelled)
            if labelled:
                feature["labels"] = label
            features.append(feature)
            # Winogender pairs are consecutive lines; pair_id names them in the official file.
            examples.append(Example(row.values.get("idx", number), label, row.values.get("pair_id", number // 2)))
        return Split(name, path, features, examples, labelled, [m for m in [counter.report()] if m])

    def split_metrics(self, name: str, predicted: np.ndarray, split: Split) -> dict[str, float]:
        golds = np.asarray([e.label for e in split.examples])
        return M.classification_metrics(predicted, golds, self.metrics)

    def score(self, split: Split, outputs: list[np.ndarray]):
        predicted = np.stack(outputs).argmax(-1)
        if not split.has_labels:
            return {}, predicted
        return self.split_metrics(split.name, predicted, split), predicted


@register("boolq")
class BoolQTask(SentencePairTask):
    submission = "BoolQ"

    def texts(self, path, row, split_name):
        return str(row.get(path, "passage")), str(row.get(path, "question"))


@register("cb")
class CommitmentBankTask(SentencePairTask):
    labels = Labels(("entailment", "contradiction", "neutral"), ("entailment", "contradiction", "neutral"))
    metrics = ("f1_macro", "accuracy")  # the leaderboard shows both; the official runs select on F1
    submission = "CB"

    def texts(self, path, row, split_name):
        return str(row.get(path, "premise")), str(row.get(path, "hypothesis"))


@dataclass(frozen=True)
class Diagnostic:
    stem: str  # file name and submission name
    columns: tuple[str, str]


DIAGNOSTICS = {"ax-b": Diagnostic("AX-b", ("sentence1", "sentence2")),
               "ax-g": Diagnostic("AX-g", ("premise", "hypothesis"))}


def _has_labels(path: Path) -> bool:
    return "label" in read_table(path)[0].values


@register("superglue-rte", *DIAGNOSTICS)
class RteTask(SentencePairTask):
    """RTE in SuperGLUE's layout; its model also predicts the AX-b and AX-g diagnostics."""

    labels = Labels(("entailment", "not_entailment"), ("entailment", "not_entailment"))
    submission = "RTE"

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.diagnostic_only = config.task in DIAGNOSTICS
        self.diagnostics = (config.task,) if self.diagnostic_only else tuple(DIAGNOSTICS)
        self._found: Optional[dict[str, Path]] = None

    def diagnostic_files(self) -> dict[str, Path]:
        if self._found is not None:
            return self._found
        self._found = {}
        for name in self.diagnostics:
            stem = DIAGNOSTICS[name].stem
            if self.diagnostic_only and self.config.test:
                self._found[name] = Path(self.config.test)
                continue
            folder = Path(self.config.data_dir) if self.config.data_dir else None
            candidates = [folder / f"{stem}.jsonl", folder.parent / stem / f"{stem}.jsonl"] if folder else []
            found = next((p for p in candidates if p.is_file()), None)
            if found is not None:
                self._found[name] = found
            elif self.diagnostic_only:
                raise DataError(f"{stem}.jsonl not found (looked for {[str(p) for p in candidates]}); "
                                f"give --test PATH/{stem}.jsonl")
        return self._found

    def eval_files(self) -> dict[str, Path]:
        files = super().eval_files()
        files.update({n: p for n, p in self.diagnostic_files().items() if _has_labels(p)})
        return files

    def test_files(self) -> dict[str, Path]:
        files = {} if self.diagnostic_only and self.config.test else super().test_files()
        files.update({n: p for n, p in self.diagnostic_files().items() if not _has_labels(p)})
        return files

    def texts(self, path, row, split_name):
        first, second = DIAGNOSTICS[split_name].columns if split_name in DIAGNOSTICS else ("premise", "hypothesis")
        return str(row.get(path, first)), str(row.get(path, second))

    def split_metrics(self, name, predicted, split):
        golds = np.asarray([e.label for e in split.examples])
        accuracy = M.accuracy(predicted, golds)
        if name == "ax-b":
            return {"mcc": M.matthews_corrcoef(predicted, golds), "accuracy": accuracy}
        if name == "ax-g":
            return {"gender_parity": gender_parity(predicted.tolist(), [e.pair_id for e in split.examples]),
                    "accuracy": accuracy}
        return {"accuracy": accuracy}


# ---------------------------------------------------------------------------------------
# Span tasks: marked spans
# ---------------------------------------------------------------------------------------
def mark_spans(text: str, spans: list[tuple[int, int, str]]) -> str:
    """``text`` with each character span [start, end) wrapped in its marker, set apart by
    spaces. Spans may nest: at one place markers close before others open, the inner span's
    first, and the outer span opens first."""
    cuts = sorted([(end, 0, -start, marker) for start, end, marker in spans]
                  + [(start, 1, -end, marker) for start, end, marker in spans])
    pieces, done = [], 0
    for position, _, _, marker in cuts:
        pieces += [text[done:position], f" {marker} "]
        done = position
    return re.sub(" {2,}", " ", "".join(pieces) + text[done:]).strip()


@register("wic")
class WordInContextTask(SentencePairTask):
    submission = "WiC"
    MARKER = "*"

    def _marked(self, path: Path, row: Row, n: int) -> str:
        sentence = str(row.get(path, f"sentence{n}"))
        start, end = row.get(path, f"start{n}"), row.get(path, f"end{n}")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(sentence)):
            raise DataError(f"{path}, line {row.line}: start{n}/end{n} ({start!r}, {end!r}) are not a span of "
                            f"sentence{n} ({len(sentence)} characters)")
        return mark_spans(sentence, [(start, end, self.MARKER)])

    def texts(self, path, row, split_name):
        return self._marked(path, row, 1), self._marked(path, row, 2)


def _letters(text: str) -> str:
    return re.sub(r"\W", "", text.lower())


def word_span(text: str, index: int, span_text: str) -> Optional[tuple[int, int]]:
    """Character span of ``span_text`` said to start at whitespace word ``index``; the nearest
    occurrence when the index is off; None when the words are nowhere in the text."""
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    n_words, wanted = max(1, len(span_text.split())), _letters(span_text)

    def at(i: int) -> Optional[tuple[int, int]]:
        if not 0 <= i <= len(words) - n_words or not wanted:
            return None
        start, end = words[i][0], words[i + n_words - 1][1]
        if not _letters(text[start:end]).startswith(wanted):
            return None
        # Trailing punctuation of the last word ("him.") stays outside the span.
        exact = text[start:start + len(span_text)].lower() == span_text.lower()
        return start, (start + len(span_text) if exact else end)

    for i in sorted(range(len(words)), key=lambda i: abs(i - index)):
        found = at(i)
        if found:
            return found
    return None


@register("wsc")
class WinogradTask(SentencePairTask):
    """Does the pronoun (span2, marked ``#``) refer to the noun phrase (span1, marked ``*``)?"""

    labels = Labels((False, True), ("False", "True"))
    submission = "WSC"

    def texts(self, path, row, split_name):
        text = str(row.get(path, "text"))
        target = row.get(path, "target")
        spans = []
        for n, marker in ((1, "*"), (2, "#")):
            index = require(path, row.line, target, f"span{n}_index", "target.")
            span_text = str(require(path, row.line, target, f"span{n}_text", "target."))
            if not isinstance(index, int):
                raise DataError(f"{path}, line {row.line}: target.span{n}_index {index!r} is not a word index")
            span = word_span(text, index, span_text)
            if span is None:
                raise DataError(f"{path}, line {row.line}: target.span{n}_text {span_text!r} is not in the text")
            spans.append((*span, marker))
        return mark_spans(text, spans), None


# ---------------------------------------------------------------------------------------
# COPA: multiple choice between two alternatives
# ---------------------------------------------------------------------------------------
@register("copa")
class CopaTask(SuperGlueTask):
    head = "multiple_choice"
    labels = Labels((0, 1), (0, 1))
    submission = "COPA"

    @property
    def num_labels(self) -> int:
        return 1  # one score per alternative

    def load(self, name: str, path: Path, labelled: bool) -> Split:
        counter = TruncationCounter(path, self.config.max_seq_length)
        features, examples = [], []
        for number, row in enumerate(read_table(path)):
            premise = self.tokenizer.encode(str(row.get(path, "premise")))
            question = str(row.get(path, "question")).strip().lower()
            if question not in ("cause", "effect"):
                raise DataError(f"{path}, line {row.line}: question {question!r} is not 'cause' or 'effect'")
            choices = []
            for key in ("choice1", "choice2"):
                choice = self.tokenizer.encode(str(row.get(path, key)))
                pair = (choice, list(premise)) if question == "cause" else (list(premise), choice)
                counter.add(len(premise) + len(choice) + 3)
                choices.append(pair_features(self, *pair, path, row.line))
            feature = {key: [c[key] for c in choices] for key in choices[0]}
            label = self._label(path, row, labelled)
            if labelled:
                feature["labels"] = label
            features.append(feature)
            examples.append(Example(row.values.get("idx", number), label))
        return Split(name, path, features, examples, labelled, [m for m in [counter.report()] if m])

    def score(self, split: Split, outputs: list[np.ndarray]):
        predicted = np.stack(outputs).argmax(-1)
        if not split.has_labels:
            return {}, predicted
        return {"accuracy": M.accuracy(predicted, [e.label for e in split.examples])}, predicted
