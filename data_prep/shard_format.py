"""The on-disk format of token shards: a ``.bin`` of packed sequences and its ``.idx``.

Packing follows the official DeBERTa pipeline: the documents of a split are concatenated
into one token stream, with nothing between documents, and the stream is cut every
``seq_len - 2`` tokens; each cut becomes ``[CLS] tokens [SEP]``. Every sequence therefore
has exactly ``seq_len`` tokens except the last one of a split, which may be shorter.

Shards store the packed sequences themselves, so that sequence ``i`` is a slice of a
memory map (no copy, no index lookup beyond a division).

``NAME.bin``: the sequences back to back, token ids little-endian in the smallest unsigned
type that holds the vocabulary. No header, so that the whole file maps as one array.

``NAME.idx``, written after the ``.bin`` and so the mark that the shard is complete::

    magic        8 bytes  b"DBTAIDX\\0"
    version      u32      INDEX_VERSION
    itemsize     u32      bytes per token id in the .bin (1, 2 or 4)
    seq_len      u64
    first_sequence, num_sequences          u64  sequences of the split held here
    first_token, num_tokens                u64  span of the split's token stream held here
    num_documents                          u64  documents that begin in this shard
    bin_bytes                              u64  size of the .bin, to catch a truncated one
    document_starts   num_documents x u64  stream offsets where those documents begin

All integers are little-endian.
"""
from __future__ import annotations

import hashlib
import os
import signal
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import numpy as np

from deberta.atomic import atomic_file, fsync_dir, temporary_name

# The output folder: manifest.json (written last), the tokenizer copy, the shards, and
# .work/ while a job is unfinished. Here rather than in sharding.py so that the reader
# (dataset.py) does not import the writer.
FORMAT_NAME = "deberta-data-prep"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_FOLDER = "tokenizer"
WORK_FOLDER = ".work"

INDEX_MAGIC = b"DBTAIDX\0"
INDEX_VERSION = 1
_INDEX_HEADER = struct.Struct("<8sII7Q")

# Test hook: after this many committed files a process SIGKILLs itself, so that tests can
# interrupt a job at an exact point and check that the next run resumes from there.
KILL_AFTER_COMMITS_ENV = "DATA_PREP_KILL_AFTER_COMMITS"
_commits_in_this_process = 0


def smallest_uint_dtype(vocab_size: int) -> np.dtype:
    """The narrowest little-endian unsigned type that holds ids ``0 .. vocab_size - 1``."""
    for dtype in ("<u1", "<u2", "<u4"):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"vocab_size {vocab_size} does not fit 32-bit token ids")


def sha256_file(path: str | Path, block_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()


def describe_tokenizer(path: str, tokenizer) -> dict:
    """The manifest's record of a tokenizer (a ``deberta.tokenizer.Tokenizer``): its files'
    hashes, by which a reader checks that ids and tokenizer belong together."""
    files = {name: sha256_file(source) for name, source in tokenizer.files().items()}
    return {"kind": tokenizer.name, "path": os.path.abspath(path), "sha256": next(iter(files.values())),
            "files": files, "copy": TOKENIZER_FOLDER}


def _counted_commit() -> None:
    """The test hook: SIGKILL this process once it has committed $DATA_PREP_KILL_AFTER_COMMITS files."""
    global _commits_in_this_process
    _commits_in_this_process += 1
    kill_after = os.environ.get(KILL_AFTER_COMMITS_ENV)
    if kill_after and _commits_in_this_process >= int(kill_after):
        os.kill(os.getpid(), signal.SIGKILL)


def commit(temporary: Path, final: Path) -> None:
    """Move a fully written ``temporary_name(final)`` into place: synced, renamed within its
    folder (atomic), the rename synced; for writers that fill several files before committing
    them. A single file is simpler with ``write_atomically`` or ``deberta.atomic.atomic_file``."""
    with open(temporary, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(temporary, final)
    fsync_dir(final.parent)
    _counted_commit()


def write_atomically(path: Path, data: bytes) -> None:
    with atomic_file(path) as temporary:
        temporary.write_bytes(data)
    _counted_commit()


@dataclass(frozen=True)
class Packing:
    """Where each token of a split's stream lands in the packed sequences."""

    seq_len: int
    cls_id: int
    sep_id: int

    def __post_init__(self):
        if self.seq_len < 3:
            raise ValueError(f"seq_len={self.seq_len} leaves no room for text between [CLS] and [SEP]")

    @property
    def text_per_sequence(self) -> int:
        return self.seq_len - 2

    def num_sequences(self, stream_tokens: int) -> int:
        return -(-stream_tokens // self.text_per_sequence)

    def pack(self, text: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """``[CLS] w [SEP]`` for each consecutive window ``w`` of ``text``; the last may be short."""
        width = self.text_per_sequence
        full, rest = divmod(len(text), width)
        packed = np.empty(full * self.seq_len + (rest + 2 if rest else 0), dtype=dtype)
        rows = packed[: full * self.seq_len].reshape(full, self.seq_len)
        rows[:, 0] = self.cls_id
        rows[:, 1:-1] = text[: full * width].reshape(full, width)
        rows[:, -1] = self.sep_id
        if rest:
            tail = packed[full * self.seq_len:]
            tail[0], tail[-1] = self.cls_id, self.sep_id
            tail[1:-1] = text[full * width:]
        return packed


@dataclass(frozen=True)
class ShardIndex:
    itemsize: int
    seq_len: int
    first_sequence: int
    num_sequences: int
    first_token: int
    num_tokens: int
    num_documents: int
    bin_bytes: int
    document_starts: np.ndarray

    def to_bytes(self) -> bytes:
        header = _INDEX_HEADER.pack(INDEX_MAGIC, INDEX_VERSION, self.itemsize, self.seq_len,
                                    self.first_sequence, self.num_sequences, self.first_token,
                                    self.num_tokens, self.num_documents, self.bin_bytes)
        return header + np.ascontiguousarray(self.document_starts, dtype="<u8").tobytes()

    @classmethod
    def read(cls, path: str | Path) -> "ShardIndex":
        path = Path(path)
        data = path.read_bytes()
        if len(data) < _INDEX_HEADER.size:
            raise ValueError(f"{path}: index truncated ({len(data)} bytes, header needs "
                             f"{_INDEX_HEADER.size})")
        magic, version, *fields = _INDEX_HEADER.unpack_from(data)
        if magic != INDEX_MAGIC:
            raise ValueError(f"{path}: not a data_prep shard index (magic {magic!r})")
        if version != INDEX_VERSION:
            raise ValueError(f"{path}: index format version {version}, this code reads "
                             f"version {INDEX_VERSION}")
        itemsize, seq_len, first_sequence, num_sequences, first_token, num_tokens, \
            num_documents, bin_bytes = fields
        expected = _INDEX_HEADER.size + 8 * num_documents
        if len(data) != expected:
            raise ValueError(f"{path}: index has {len(data)} bytes, its header announces {expected}")
        starts = np.frombuffer(data, dtype="<u8", count=num_documents, offset=_INDEX_HEADER.size)
        return cls(itemsize, seq_len, first_sequence, num_sequences, first_token, num_tokens,
                   num_documents, bin_bytes, starts)


@dataclass(frozen=True)
class ShardFiles:
    """What the manifest records of one written shard."""

    bin_bytes: int
    bin_sha256: str
    idx_bytes: int
    idx_sha256: str


def write_shard(bin_path: Path, idx_path: Path, packed_chunks: Iterable[np.ndarray],
                index_without_size: ShardIndex) -> ShardFiles:
    """Write the ``.bin`` from ``packed_chunks``, then the ``.idx`` that marks it complete.

    Both go to temporary names first, so a killed writer leaves no file that looks finished.
    """
    digest, size = hashlib.sha256(), 0
    try:
        with atomic_file(bin_path) as temporary, open(temporary, "wb") as f:
            for chunk in packed_chunks:
                data = memoryview(chunk).cast("B")      # the packed bytes, not a copy of them
                digest.update(data)
                f.write(data)
                size += data.nbytes
    except OSError as error:
        if error.filename is not None:
            raise
        raise OSError(error.errno, error.strerror, str(bin_path)) from error  # name the shard (a full disk)
    _counted_commit()
    index = replace(index_without_size, bin_bytes=size)
    index_bytes = index.to_bytes()
    write_atomically(idx_path, index_bytes)
    return ShardFiles(size, digest.hexdigest(), len(index_bytes), hashlib.sha256(index_bytes).hexdigest())
