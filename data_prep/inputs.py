"""Finding input files, cutting them into pieces, and reading documents out of a piece.

Formats: ``.txt`` (documents separated by blank lines), ``.jsonl`` (one JSON object per
line, text in ``text_field``), ``.parquet`` (a ``text_field`` column) and folders saved by
Hugging Face ``datasets`` (``save_to_disk``, a Dataset or a DatasetDict); ``.txt``,
``.jsonl`` and ``.parquet`` may be gzip-compressed (``.gz``).

A *piece* is the unit of parallel work. An uncompressed ``.txt`` or ``.jsonl`` file is cut
into byte ranges, a piece owning the documents that *begin* in its range, so that the
pieces of a file together read each document exactly once, whatever their size. A parquet
file gives one piece per row group, a dataset folder one per arrow file, and a compressed
file (which cannot be entered in the middle) one piece.

Bad input is counted by kind in a :class:`ProblemLog` with the file and line (or row).
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import shutil
import sys
import unicodedata
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from deberta.errors import InputError

PROBLEM_KINDS = ("invalid_utf8", "empty_document", "broken_json", "missing_text_field",
                 "unreadable_file", "binary_file")

# A text input is judged by the first SNIFF_BYTES of its file (after decompression): a NUL
# byte, or more than BINARY_SHARE of its characters invalid UTF-8 or control characters,
# mark an executable, an image, an archive without its suffix or text in another encoding
# (UTF-16, a legacy code page). Such a file would shard as garbage tokens with a handful of
# "invalid UTF-8 documents"; it is skipped and reported instead. Text in a legacy code page
# with a few accented letters (a few percent of its characters) stays below the share.
SNIFF_BYTES = 1 << 16
BINARY_SHARE = 0.10
_CONTROL_CHARACTERS = frozenset(chr(c) for c in range(32) if chr(c) not in "\t\n\r\x0b\x0c") | {"\ufffd"}

# Lines of a text input are read through a buffer of this size: the default 8 KiB would
# cost a system call per few lines, a tenth of the time taken to read and split them.
READ_BUFFER_BYTES = 1 << 20


class UnreadableInput(InputError):
    """An input file that cannot be read as a whole (missing column, wrong type, ...)."""


class BadInputPattern(InputError, ValueError):
    """An ``--input`` that names no usable file; the message says which and why."""


def unreadable_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "this input cannot be read", as opposed to a bug in this code.

    pyarrow is imported by the first parquet or arrow input, not before: text inputs never
    load it (a twentieth of a second at the start of every run), and an ArrowException can
    only come from a process that did."""
    pyarrow = sys.modules.get("pyarrow")
    return (UnreadableInput, OSError, EOFError, zlib.error, *((pyarrow.ArrowException,) if pyarrow else ()))


def binary_reason(head: bytes) -> str | None:
    """Why the start of a file is not UTF-8 text, or None when it is."""
    if not head:
        return None
    if b"\0" in head:
        return (f"NUL bytes in its first {len(head):,} bytes: a binary file, or text in UTF-16 (convert it to "
                f"UTF-8)")
    text = head.decode("utf-8", errors="replace")
    if len(head) == SNIFF_BYTES:  # a character cut by the end of the sample is not an error
        text = text[:-3]
    bad = sum(map(text.count, _CONTROL_CHARACTERS))
    if text and bad > BINARY_SHARE * len(text):
        return (f"{bad / len(text):.0%} of the characters in its first {len(head):,} bytes are invalid UTF-8 or "
                f"control characters: a binary file, or text in another encoding (convert it to UTF-8)")
    return None


def normalize_text(text: str) -> str:
    """Unicode NFC, ``\\n`` line ends, no trailing spaces on a line, no leading or trailing
    blank space in the document. Duplicates are detected on this form."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.rstrip()          # a document of one line, the usual, is not split
    if "\n" in text:
        text = "\n".join(map(str.rstrip, text.split("\n")))
    text = text.lstrip()
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text


@dataclass
class ProblemLog:
    """Counts of bad input by kind, with the first ``max_examples`` locations of each."""

    max_examples: int = 20
    counts: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)

    def add(self, kind: str, where: str, detail: str = "") -> None:
        assert kind in PROBLEM_KINDS, kind
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.counts[kind] <= self.max_examples:
            self.examples.append({"kind": kind, "where": where, "detail": detail})

    def merge(self, other: dict) -> None:
        for kind, count in other["counts"].items():
            self.counts[kind] = self.counts.get(kind, 0) + count
        for example in other["examples"]:
            shown = sum(1 for e in self.examples if e["kind"] == example["kind"])
            if shown < self.max_examples:
                self.examples.append(example)

    def to_json(self) -> dict:
        return {"counts": dict(sorted(self.counts.items())), "examples": self.examples}


@dataclass(frozen=True)
class Piece:
    index: int
    path: str
    format: str
    compressed: bool
    start: int = 0       # byte offset (plain txt/jsonl) or row group (parquet)
    end: int = -1        # byte offset or row group, exclusive; -1 = to the end
    size: int = 0        # bytes on disk, for scheduling and progress
    file_bytes: int = 0
    file_mtime_ns: int = 0

    @property
    def key(self) -> str:
        """Names the piece's work files: a piece is done once, and redone when its file
        changes, whatever else changes in the list of inputs between runs."""
        identity = f"{self.path}|{self.format}|{self.compressed}|{self.start}|{self.end}|" \
                   f"{self.file_bytes}|{self.file_mtime_ns}"
        return hashlib.blake2b(identity.encode(), digest_size=10).hexdigest()


# --- finding inputs -------------------------------------------------------------------

def _file_format(path: str) -> tuple[str, bool]:
    name = path[:-3] if path.endswith(".gz") else path
    for suffix, fmt in ((".txt", "txt"), (".jsonl", "jsonl"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return fmt, path.endswith(".gz")
    raise BadInputPattern(f"{path}: unknown input format (expected .txt, .jsonl, .parquet, each "
                          f"optionally .gz, or a folder saved by datasets.save_to_disk); rename it or leave it "
                          f"out of --input")


def _dataset_arrow_files(folder: Path) -> list[str]:
    """The arrow files of a ``save_to_disk`` folder, in the order datasets lists them."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        return [f for split in splits for f in _dataset_arrow_files(folder / split)]
    state = json.loads((folder / "state.json").read_text())
    return [str(folder / entry["filename"]) for entry in state["_data_files"]]


def find_inputs(patterns: list[str]) -> list[tuple[str, str, bool]]:
    """``(path, format, compressed)`` of every input, patterns in the order given, the
    matches of each pattern sorted, each path once."""
    found, seen = [], set()
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise BadInputPattern(f"--input {pattern!r} matches no file (relative to {os.getcwd()}); check the "
                                  f"path, and quote a pattern so that the shell does not expand it")
        for path in matches:
            if path in seen:
                continue
            seen.add(path)
            if os.path.isdir(path):
                folder = Path(path)
                if not ((folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()):
                    raise BadInputPattern(f"{path}: a folder, but not one saved by datasets.save_to_disk (no "
                                          f"state.json or dataset_dict.json); give its files, e.g. "
                                          f"'{path}/*.txt'")
                found += [(arrow, "arrow", False) for arrow in _dataset_arrow_files(folder)]
            else:
                found.append((path, *_file_format(path)))
    return found


def plan_pieces(inputs: list[tuple[str, str, bool]], piece_bytes: int) -> list[Piece]:
    """Pieces ``(start, end, size)`` of each input, in input order."""
    pieces: list[Piece] = []
    for path, fmt, compressed in inputs:
        status = os.stat(path)
        if fmt in ("txt", "jsonl") and not compressed:
            size = status.st_size
            spans = [(start, min(start + piece_bytes, size), min(piece_bytes, size - start))
                     for start in range(0, max(size, 1), piece_bytes)]
        elif fmt == "parquet" and not compressed:
            import pyarrow.parquet
            metadata = pyarrow.parquet.ParquetFile(path).metadata
            spans = [(group, group + 1, metadata.row_group(group).total_byte_size)
                     for group in range(metadata.num_row_groups)]
        else:
            spans = [(0, -1, status.st_size)]
        for start, end, size in spans:
            pieces.append(Piece(len(pieces), path, fmt, compressed, start, end, size, status.st_size,
                                status.st_mtime_ns))
    return pieces


# --- reading a piece ------------------------------------------------------------------

class PieceReader:
    """Yields ``(number, raw_text)`` for the documents of one piece; ``where(number)`` names
    the file and line (or row) for messages."""

    def __init__(self, piece: Piece, text_field: str, problems: ProblemLog, scratch_dir: Path):
        self.piece, self.text_field, self.problems, self.scratch_dir = piece, text_field, problems, scratch_dir
        self._first_line_offset = 0       # byte offset of the piece's first line
        self._lines_before_piece: int | None = None

    def where(self, number: int) -> str:
        if self.piece.format in ("parquet", "arrow"):
            return f"{self.piece.path}: row {number}"
        if self._lines_before_piece is None:
            self._lines_before_piece = self._count_newlines(self._first_line_offset)
        return f"{self.piece.path}:{self._lines_before_piece + number}"

    def _count_newlines(self, end: int) -> int:
        """Only needed to name a line in a piece that starts mid-file, so only on problems."""
        count, remaining = 0, end
        with open(self.piece.path, "rb") as f:
            while remaining > 0:
                block = f.read(min(remaining, 1 << 24))
                count += block.count(b"\n")
                remaining -= len(block)
        return count

    def documents(self) -> Iterator[tuple[int, str]]:
        if self.piece.format in ("txt", "jsonl"):
            reason = binary_reason(self._file_head())
            if reason:
                if self.piece.start == 0:  # one report per file, from its first piece
                    self.problems.add("binary_file", self.piece.path, f"{reason}; skipped")
                return
        reader = {"txt": self._text_documents, "jsonl": self._json_documents,
                  "parquet": self._parquet_documents, "arrow": self._arrow_documents}
        yield from reader[self.piece.format]()

    def _file_head(self) -> bytes:
        """The first SNIFF_BYTES of the file (decompressed): every piece judges the whole file alike."""
        opener = gzip.open if self.piece.compressed else open
        with opener(self.piece.path, "rb") as f:
            return f.read(SNIFF_BYTES)

    def _open_lines(self):
        """The binary file positioned at the first line that starts in the piece's range,
        whether the line before it is blank, and the end of the range."""
        piece = self.piece
        if piece.compressed:
            return gzip.open(piece.path, "rb"), True, float("inf")
        f = open(piece.path, "rb", buffering=READ_BUFFER_BYTES)
        previous_blank = True
        if piece.start > 0:
            f.seek(piece.start - 1)
            self._first_line_offset = piece.start - 1 + len(f.readline())
            previous_blank = _line_before_is_blank(f, self._first_line_offset)
            f.seek(self._first_line_offset)
        return f, previous_blank, piece.end

    def _text_documents(self) -> Iterator[tuple[int, str]]:
        f, previous_blank, end = self._open_lines()
        with f:
            # A non-blank line right after a non-blank one continues the document that an
            # earlier piece owns: skip until the next blank line.
            inside_earlier_document = not previous_blank
            position, number, lines, first_number = self._first_line_offset, 0, [], 0
            for line in f:
                line_start, position, number = position, position + len(line), number + 1
                if not lines and line_start >= end:
                    break
                if line.isspace():
                    if lines:
                        yield first_number, self._decode(b"".join(lines), first_number)
                        lines = []
                    inside_earlier_document = False
                elif not inside_earlier_document:
                    if not lines:
                        first_number = number
                    lines.append(line)
            if lines:
                yield first_number, self._decode(b"".join(lines), first_number)

    def _decode(self, data: bytes, first_number: int) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = first_number + data[:error.start].count(b"\n")
            self.problems.add("invalid_utf8", self.where(line),
                              f"byte {data[error.start]:#04x}; replaced by U+FFFD")
            return data.decode("utf-8", errors="replace")

    def _json_documents(self) -> Iterator[tuple[int, str]]:
        f, _, end = self._open_lines()
        with f:
            position, number = self._first_line_offset, 0
            for line in f:
                line_start, position, number = position, position + len(line), number + 1
                if line_start >= end:
                    break
                if line.isspace():
                    continue
                try:
                    record = json.loads(self._decode(line, number))
                except json.JSONDecodeError as error:
                    self.problems.add("broken_json", self.where(number), f"{error.msg} at column {error.colno}")
                    continue
                text = record.get(self.text_field) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    fields = f" (fields: {', '.join(list(record)[:8])})" if isinstance(record, dict) else ""
                    self.problems.add("missing_text_field", self.where(number),
                                      f"no string field {self.text_field!r}{fields}")
                    continue
                yield number, text

    def _column_texts(self, batches, schema) -> Iterator[tuple[int, str]]:
        import pyarrow.types
        if self.text_field not in schema.names:
            raise UnreadableInput(f"no column {self.text_field!r} (columns: {', '.join(schema.names)})")
        column_type = schema.field(self.text_field).type
        if not (pyarrow.types.is_string(column_type) or pyarrow.types.is_large_string(column_type)):
            raise UnreadableInput(f"column {self.text_field!r} is {column_type}, not text")
        row = self._first_row
        for batch in batches:
            for text in batch.column(self.text_field).to_pylist():
                yield row, text if text is not None else ""
                row += 1

    def _parquet_documents(self) -> Iterator[tuple[int, str]]:
        import pyarrow.parquet
        path = self._decompressed() if self.piece.compressed else self.piece.path
        try:
            parquet = pyarrow.parquet.ParquetFile(path)
            groups = (list(range(parquet.metadata.num_row_groups)) if self.piece.end < 0
                      else list(range(self.piece.start, self.piece.end)))
            self._first_row = sum(parquet.metadata.row_group(g).num_rows for g in range(groups[0] if groups else 0))
            batches = parquet.iter_batches(batch_size=1024, row_groups=groups,
                                            columns=[self.text_field])
            yield from self._column_texts(batches, parquet.schema_arrow)
        finally:
            if path != self.piece.path:
                os.unlink(path)

    def _arrow_documents(self) -> Iterator[tuple[int, str]]:
        import pyarrow.ipc
        self._first_row = 0
        with pyarrow.memory_map(self.piece.path) as source:
            try:
                reader = pyarrow.ipc.open_stream(source)
            except pyarrow.ArrowInvalid:
                source.seek(0)
                file_reader = pyarrow.ipc.open_file(source)
                reader = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
                yield from self._column_texts(reader, file_reader.schema)
                return
            yield from self._column_texts(reader, reader.schema)

    def _decompressed(self) -> str:
        """Parquet needs random access, so a ``.parquet.gz`` is unpacked to scratch first."""
        target = self.scratch_dir / f"{self.piece.key}.{os.getpid()}.parquet"
        with gzip.open(self.piece.path, "rb") as source, open(target, "wb") as destination:
            shutil.copyfileobj(source, destination, 1 << 22)
        return str(target)


def _line_before_is_blank(f, line_start: int) -> bool:
    """Whether the line that ends just before ``line_start`` holds only whitespace."""
    position = line_start - 1          # the newline that ends that line
    while position > 0:
        window_start = max(0, position - 4096)
        f.seek(window_start)
        stripped = f.read(position - window_start).rstrip(b" \t\r\x0b\x0c")
        if stripped:
            # Either the newline of the line before it (so that line was blank) or text.
            return stripped.endswith(b"\n")
        position = window_start
    return True
