"""Reading task files with errors that name the file and the row, and the batches built from them.

Rows carry the line number they came from (1-based, the header is line 1), so a message
such as ``dev.tsv, line 17: label 'maybe' is not one of ['0', '1']`` points at the spot.
"""
from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from deberta.atomic import atomic_write
from deberta.errors import InputError

TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json")


class DataError(InputError, ValueError):
    """Task data that cannot be used as it is; the message names the file and row."""


@dataclass
class Row:
    values: dict[str, Any]
    line: int  # where the row starts in its file

    def get(self, path: Path, column: str) -> Any:
        if column not in self.values or self.values[column] is None:
            raise DataError(f"{path}, line {self.line}: no value in column {column!r}")
        return self.values[column]


def read_table(path: str | Path, columns: Optional[list[str]] = None) -> list[Row]:
    """The rows of a TSV, CSV or JSON-lines file.

    TSV and CSV files have a header row unless ``columns`` names the columns (GLUE's CoLA
    train/dev files have none). GLUE TSVs contain unbalanced quotes, so TSV is read
    without quoting; CSV follows the usual quoting rules.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix in (".jsonl", ".json"):
        rows = _read_jsonl(path)
    elif path.suffix in (".tsv", ".csv"):
        rows = _read_delimited(path, "\t" if path.suffix == ".tsv" else ",", columns)
    else:
        raise DataError(f"{path}: unknown table format {path.suffix!r}; expected one of {TABLE_SUFFIXES}")
    if not rows:
        raise DataError(f"{path}: the file has no data rows")
    return rows


def _read_delimited(path: Path, delimiter: str, columns: Optional[list[str]]) -> list[Row]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        header = columns
        if header is None:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: the file is empty (expected a header row)")
        rows = []
        for fields in reader:
            line = reader.line_num
            if not fields or all(not x.strip() for x in fields):
                continue
            if len(fields) < len(header):
                raise DataError(f"{path}, line {line}: {len(fields)} fields but the header has {len(header)} "
                                f"({header})")
            rows.append(Row(dict(zip(header, fields)), line))
        return rows


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                values = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {line_number}: not valid JSON ({error})") from None
            if not isinstance(values, dict):
                raise DataError(f"{path}, line {line_number}: expected a JSON object, got {type(values).__name__}")
            rows.append(Row(values, line_number))
    return rows


def write_tsv(path: Path, rows) -> Path:
    """Rows (the header first) as a tab-separated file, written atomically."""
    text = io.StringIO()
    csv.writer(text, delimiter="\t", lineterminator="\n").writerows(rows)
    return atomic_write(path, text.getvalue())


def require_columns(path: Path, rows: list[Row], columns: list[str]) -> None:
    """Fail once, listing what the file does have, rather than on every row."""
    present = set(rows[0].values)
    missing = [c for c in columns if c not in present]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r} (missing {missing}; the file has {sorted(present)})")


def truncate_official(segments: list[list[int]], budget: int, rng: random.Random) -> None:
    """Shorten the segments in place until together they fit ``budget`` tokens, as the
    official data code does (``_truncate_segments`` in DeBERTa/data/example.py, after the
    original BERT's pair truncation): one token at a time from the currently longest
    segment (of equals, the one the previous sort put first), its first or its last token
    with equal chance.

    Cutting at both ends keeps the middle of a long text in view and varies what is lost.
    One difference, on purpose: the official function returns the segments sorted by
    length, so a pair it had to cut comes back with the longer text first (premise and
    hypothesis swap when the hypothesis was longer); here the order stays as given.
    The official loader draws anew each time an example is read (its generator is seeded
    by the example's place in the epoch); here the caller's ``rng`` decides once per input.
    """
    by_length = list(segments)  # the same lists, in the official's working order
    while sum(len(segment) for segment in segments) > budget:
        by_length.sort(key=len, reverse=True)  # stable: equals keep their order, as sorted() there
        by_length[0].pop(0 if rng.random() < 0.5 else -1)


def truncation_rng(seed: int, path: Path, row: int) -> random.Random:
    """The generator of one input's official truncation: the same for the same run seed,
    file name and row, so every rank and every rerun cuts alike."""
    return random.Random(f"{seed}:{path.name}:{row}")


@dataclass
class TruncationCounter:
    """Counts sequences that had to be shortened, for one line of report per file."""

    path: Path
    max_length: int
    truncated: int = 0
    total: int = 0
    longest: int = 0

    def add(self, full_length: int) -> None:
        self.total += 1
        self.longest = max(self.longest, full_length)
        if full_length > self.max_length:
            self.truncated += 1

    def report(self) -> Optional[str]:
        if not self.truncated:
            return None
        return (f"{self.path}: truncated {self.truncated} of {self.total} sequences to max_seq_length="
                f"{self.max_length} tokens (longest: {self.longest})")


@dataclass
class Split:
    """One file turned into model inputs.

    ``features`` are the model inputs (lists of ints per field); several features may
    come from one example (SQuAD windows). ``examples`` are what the task needs to score
    and print predictions, one per input example.
    """

    name: str
    path: Path
    features: list[dict[str, Any]]
    examples: list[Any]
    has_labels: bool
    notes: list[str] = field(default_factory=list)


class FeatureDataset(torch.utils.data.Dataset):
    def __init__(self, features: list[dict]):
        self.features = features

    def __len__(self):
        return len(self.features)

    def __getitem__(self, index):
        return self.features[index]


def pad_batch(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad lists to the longest in the batch. Inputs may be [L] or [C, L] (choices).

    Per-token label lists are padded with -100 (ignored by the loss); scalar labels stack.
    """
    batch: dict[str, torch.Tensor] = {}
    for name in features[0]:
        if name.startswith("_"):  # bookkeeping, not a model input
            continue
        values = [f[name] for f in features]
        if not isinstance(values[0], list):
            dtype = torch.float if isinstance(values[0], float) else torch.long
            batch[name] = torch.tensor(values, dtype=dtype)
            continue
        fill = -100 if name == "labels" else (pad_id if name == "input_ids" else 0)
        if values[0] and isinstance(values[0][0], list):  # [C, L]: pad every choice to one length
            length = max(len(choice) for v in values for choice in v)
            batch[name] = torch.tensor([[c + [fill] * (length - len(c)) for c in v] for v in values])
        else:
            length = max(len(v) for v in values)
            batch[name] = torch.tensor([v + [fill] * (length - len(v)) for v in values])
    return batch


def pack_batch(features: list[dict]) -> dict:
    """The batch with no padding: every sequence's tokens end to end, ``input_ids`` [T],
    with ``cu_seqlens`` [B+1] (int32, 0 first) and ``max_seqlen`` (an int) saying where
    each starts (deberta.model takes these in place of an attention mask). Multiple-choice
    inputs [C, L] become C sequences each, example after example, with ``num_choices``.

    Per-token labels are concatenated like the tokens; scalar labels and answer positions
    (counted from each sequence's first token, as padded) stack as in ``pad_batch``.
    """
    batch: dict = {}
    choices = isinstance(features[0]["input_ids"][0], list)
    sequences = [c for f in features for c in f["input_ids"]] if choices else [f["input_ids"] for f in features]
    lengths = [len(s) for s in sequences]
    for name in features[0]:
        if name.startswith("_") or name == "attention_mask":  # bookkeeping; the lengths say what is real
            continue
        values = [f[name] for f in features]
        if not isinstance(values[0], list):
            dtype = torch.float if isinstance(values[0], float) else torch.long
            batch[name] = torch.tensor(values, dtype=dtype)
        else:
            flat = [c for v in values for c in v] if choices else values
            batch[name] = torch.tensor([token for sequence in flat for token in sequence], dtype=torch.long)
    batch["cu_seqlens"] = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    batch["max_seqlen"] = max(lengths)
    if choices:
        batch["num_choices"] = len(features[0]["input_ids"])
    return batch


def is_packed(batch: dict) -> bool:
    return "cu_seqlens" in batch


def real_tokens(batch: dict) -> torch.Tensor:
    """The number of real (not padding) tokens of a padded or packed batch, as a tensor."""
    return batch["cu_seqlens"][-1] if is_packed(batch) else batch["attention_mask"].sum()


def example_outputs(batch: dict, logits, per_token: bool) -> list:
    """One output per feature from a batch's logits (numpy): rows of [B, ...] logits, or
    with ``per_token`` each feature's real tokens, [L_i, ...], cut from [B, L, ...] padded
    or [T, ...] packed logits."""
    if not per_token:
        return list(logits)
    if is_packed(batch):
        bounds = batch["cu_seqlens"].tolist()
        return [logits[start:end] for start, end in zip(bounds[:-1], bounds[1:])]
    lengths = batch["attention_mask"].sum(-1).tolist()
    return [row[:length] for row, length in zip(logits, lengths)]
