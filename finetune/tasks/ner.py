"""NER and other tagging from CoNLL column files, labelled on each word's first sub-token.

File format: one token per line, the word in the first column and its tag in the last,
a blank line between sentences, ``-DOCSTART-`` lines ignored. The tag set is the
training file's (``O`` first, then sorted); entity-level F1 scores chunks (BIO, IOB1 or
IOBES tags).

Each word is encoded on its own, with a leading space for all but the sentence's first
word: SentencePiece then marks every word with its ``▁`` prefix exactly as in running
text (it adds the prefix itself and drops the space), and GPT-2 BPE gets the ``Ġ`` it
gives words after a space. Words that do not fit ``max_seq_length`` are predicted ``O``;
how many is printed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deberta.atomic import atomic_write

from .. import metrics as M
from ..data import DataError, Split, TruncationCounter
from ..sift import CountedRows, symmetric_kl
from .base import Task, register

DOCSTART = "-DOCSTART-"


@dataclass
class Sentence:
    words: list[str]
    tags: list[str] | None  # None in an unlabelled file
    line: int  # first line of the sentence


def read_conll(path: Path, labelled: bool) -> list[Sentence]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    sentences, words, tags, start = [], [], [], 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields or fields[0] == DOCSTART:
                if words:
                    sentences.append(Sentence(words, tags if labelled else None, start))
                words, tags = [], []
                continue
            if labelled and len(fields) < 2:
                raise DataError(f"{path}, line {number}: expected 'word ... tag', got {line.strip()!r}")
            if not words:
                start = number
            words.append(fields[0])
            tags.append(fields[-1])
    if words:
        sentences.append(Sentence(words, tags if labelled else None, start))
    if not sentences:
        raise DataError(f"{path}: the file has no sentences")
    return sentences


@register("ner")
class NerTask(Task):
    head = "token_classification"
    default_files = {"train": "train.txt", "dev": "dev.txt", "test": "test.txt"}
    metrics = ("f1", "precision", "recall", "accuracy")
    per_token_logits = True

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.labels: list[str] = []

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def metadata(self) -> dict:
        return {**super().metadata(), "labels": self.labels}

    def prepare(self, train_path: Path) -> None:
        tags = {t for s in read_conll(train_path, labelled=True) for t in s.tags}
        self.labels = (["O"] if "O" in tags else []) + sorted(tags - {"O"})

    def load(self, name: str, path: Path, labelled: bool) -> Split:
        index = {tag: i for i, tag in enumerate(self.labels)}
        budget = self.config.max_seq_length - 2
        counter = TruncationCounter(path, self.config.max_seq_length)
        features, examples, dropped_words = [], [], 0
        for sentence in read_conll(path, labelled):
            if labelled:
                for i, tag in enumerate(sentence.tags):
                    if tag not in index:
                        raise DataError(f"{path}, line {sentence.line + i}: tag {tag!r} does not occur in the "
                                        f"training data (tags: {self.labels})")
            pieces = [self.tokenizer.encode(word if i == 0 else " " + word) or [self.tokenizer.unk_token_id]
                      for i, word in enumerate(sentence.words)]
            counter.add(sum(map(len, pieces)) + 2)
            ids, labels, word_positions = [], [], []
            for i, word_pieces in enumerate(pieces):
                if len(ids) + len(word_pieces) > budget:
                    dropped_words += len(pieces) - i
                    break
                word_positions.append(len(ids) + 1)  # +1: [CLS]
                first_label = index[sentence.tags[i]] if labelled else -100
                labels += [first_label] + [-100] * (len(word_pieces) - 1)
                ids += word_pieces
            feature = self.tokenizer.build_inputs(ids)
            if labelled:
                feature["labels"] = [-100] + labels + [-100]
            features.append(feature)
            examples.append((sentence, word_positions))
        notes = [m for m in [counter.report()] if m]
        if dropped_words:
            notes.append(f"{path}: {dropped_words} words beyond max_seq_length are predicted 'O'")
        return Split(name, path, features, examples, labelled, notes)

    def score(self, split: Split, outputs: list[np.ndarray]):
        predicted = []
        for (sentence, positions), logits in zip(split.examples, outputs):
            tags = [self.labels[i] for i in logits[positions].argmax(-1)] if positions else []
            predicted.append(tags + ["O"] * (len(sentence.words) - len(tags)))
        if not split.has_labels:
            return {}, predicted
        return M.entity_metrics(predicted, [s.tags for s, _ in split.examples]), predicted

    def write_predictions(self, split: Split, predictions: list[list[str]], folder: Path) -> Path:
        """CoNLL columns: word, gold tag (labelled splits), predicted tag."""
        path = folder / f"predictions_{split.name}.txt"
        lines = []
        for (sentence, _), tags in zip(split.examples, predictions):
            for i, (word, tag) in enumerate(zip(sentence.words, tags)):
                lines.append(" ".join([word] + ([sentence.tags[i]] if sentence.tags else []) + [tag]) + "\n")
            lines.append("\n")
        return atomic_write(path, "".join(lines))

    def divergence(self, perturbed: torch.Tensor, clean: torch.Tensor, batch: dict) -> torch.Tensor | CountedRows:
        """Per-token distributions, counting the real tokens only."""
        per_token = symmetric_kl(perturbed, clean, reduction="none")
        mask = batch.get("attention_mask")  # packed batches have none: every token is real
        return per_token if mask is None else CountedRows(per_token, mask.flatten().to(per_token.dtype))
