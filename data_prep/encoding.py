"""Stage 1 of ``shard``: read, normalise, encode and split the documents of one piece.

Each piece writes, under its key, per split, its token ids (``.tok``), one length per document (``.len``,
u32) and one 16-byte content digest per document (``.hash``) into the work folder, and
then a ``.json`` marker with its counts. A piece without a marker is not done.

The split of a document is a function of its content digest alone: the same document
lands in the same split whichever piece, worker or rank reads it, and copies of a
document all land in the same split, so deduplication never crosses splits.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from deberta.tokenizer import SentencePieceTokenizer, load_tokenizer

from .inputs import Piece, PieceReader, ProblemLog, normalize_text, unreadable_errors
from .shard_format import commit, temporary_name, write_atomically

SPLITS = ("train", "valid")
DIGEST_BYTES = 16
# Characters handed to the tokenizer at once: large enough to amortise the call, small
# enough that a worker's memory does not depend on the size of its input.
BATCH_CHARS = 1 << 20
BATCH_DOCUMENTS = 4096


@dataclass(frozen=True)
class EncodeJob:
    piece: Piece
    work_dir: str
    tokenizer_path: str
    text_field: str
    valid_fraction: float
    dtype: str


def piece_path(work_dir: str | Path, key: str, suffix: str) -> Path:
    return Path(work_dir) / "pieces" / f"{key}.{suffix}"


def valid_documents(digests: bytes, valid_fraction: float) -> np.ndarray:
    """Which of the concatenated ``DIGEST_BYTES``-byte digests mark a valid document: those
    whose first 8 bytes, a little-endian number in [0, 2**64), are below ``valid_fraction *
    2.0**64``. An integer is below a float exactly when it is below the float's ceiling, so
    the comparison in uint64 is exact."""
    leading = np.frombuffer(digests, dtype="<u8").reshape(-1, DIGEST_BYTES // 8)[:, 0]
    return leading < np.uint64(math.ceil(valid_fraction * 2.0**64))


@dataclass
class EncodedBatch:
    """The token ids of a batch of documents, back to back, and each document's count."""

    ids: np.ndarray        # signed integers, as the tokenizer gives them
    lengths: np.ndarray    # <u4, one per document

    @classmethod
    def from_lists(cls, token_lists: list[list[int]]) -> "EncodedBatch":
        lengths = np.fromiter(map(len, token_lists), dtype="<u4", count=len(token_lists))
        ids = np.fromiter(itertools.chain.from_iterable(token_lists), dtype=np.int64,
                          count=int(lengths.sum(dtype=np.uint64)))
        return cls(ids, lengths)


def _encodes_to_numpy(processor) -> bool:
    """Whether this SentencePiece can return ids as arrays (``out_type="numpy"``, 0.2.1 on)."""
    try:
        processor.encode(["a"], num_threads=1, out_type="numpy")
    except (ValueError, RuntimeError, TypeError):
        return False
    return True


@functools.lru_cache(maxsize=2)
def single_core_encoder(tokenizer_path: str) -> Callable[[list[str]], EncodedBatch]:
    """Batch encoding on one core: parallelism comes from workers and ranks, and the
    tokenizers' own thread pools (all cores by default) would oversubscribe the machine.

    SentencePiece hands its ids over as one array per document: a Python int per token,
    the default, would cost more than a tenth of the encoding itself to make and convert."""
    tokenizer = load_tokenizer(tokenizer_path)
    if isinstance(tokenizer, SentencePieceTokenizer):
        processor, spm_unk, unk = tokenizer.spm, tokenizer.spm.unk_id(), tokenizer.unk_token_id
        to_numpy = _encodes_to_numpy(processor)

        def encode(texts: list[str]) -> EncodedBatch:
            if to_numpy:
                arrays = processor.encode(texts, num_threads=1, out_type="numpy")
                batch = EncodedBatch(np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int32),
                                     np.fromiter(map(len, arrays), dtype="<u4", count=len(arrays)))
            else:
                batch = EncodedBatch.from_lists(processor.encode(texts, num_threads=1))
            if spm_unk != unk:
                batch.ids[batch.ids == spm_unk] = unk
            return batch

        return encode
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    return lambda texts: EncodedBatch.from_lists(tokenizer.encode_batch(texts))


class InputReadError(Exception):
    pass


def _guarded(documents: Iterator) -> Iterator:
    """Reading errors become ``InputReadError``; errors of this code stay what they are."""
    try:
        yield from documents
    except unreadable_errors() as error:
        raise InputReadError(f"{type(error).__name__}: {error}") from error


class _SplitOutput:
    """The three files of one split of one piece, under temporary names until committed."""

    KINDS = ("tok", "len", "hash")

    def __init__(self, work_dir: str, key: str, split: str, dtype: np.dtype):
        self.dtype = dtype
        self.final = {kind: piece_path(work_dir, key, f"{split}.{kind}") for kind in self.KINDS}
        self.temporary = {kind: temporary_name(path) for kind, path in self.final.items()}
        self.files = {kind: open(path, "wb") for kind, path in self.temporary.items()}
        self.documents = self.tokens = 0

    def append(self, ids: np.ndarray, lengths: np.ndarray, digests: bytes) -> None:
        """Documents of a batch: their ids back to back, their token counts and digests."""
        if ids.size:
            lowest, highest = int(ids.min()), int(ids.max())
            if lowest < 0 or highest > np.iinfo(self.dtype).max:
                raise ValueError(f"the tokenizer gave token id {lowest if lowest < 0 else highest}, which "
                                 f"{self.dtype} cannot hold: its vocabulary is larger than it says")
        ids.astype(self.dtype, copy=False).tofile(self.files["tok"])
        lengths.tofile(self.files["len"])
        self.files["hash"].write(digests)
        self.documents += len(lengths)
        self.tokens += ids.size

    def commit(self) -> None:
        for kind in self.KINDS:
            self.files[kind].close()
            commit(self.temporary[kind], self.final[kind])

    def discard(self) -> None:
        for kind in self.KINDS:
            self.files[kind].close()
            self.temporary[kind].unlink(missing_ok=True)


def _tokens_of(ids: np.ndarray, ends: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """The tokens of the ``chosen`` documents (``ends``: where each document's tokens end).

    Copied run by run: the documents of a split mostly come in long runs (a valid one
    every few hundred), so this is a few slices, not a pass of a mask over every token."""
    if chosen.all():
        return ids
    edges = np.diff(chosen.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    first, after = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    starts = np.concatenate(([0], ends))
    return np.concatenate([ids[starts[a]:starts[b]] for a, b in zip(first, after)])


def encode_piece(job: EncodeJob) -> dict:
    """Encode one piece; returns its marker (or, for an unreadable input, the error)."""
    piece, problems = job.piece, ProblemLog()
    encode = single_core_encoder(job.tokenizer_path)
    outputs = {split: _SplitOutput(job.work_dir, piece.key, split, np.dtype(job.dtype)) for split in SPLITS}
    reader = PieceReader(piece, job.text_field, problems, Path(job.work_dir))
    text_bytes = 0
    texts: list[str] = []
    digests: list[bytes] = []
    wheres: list[int] = []
    # The tokenizer encodes a batch in a thread of its own while this one reads the next
    # batch and writes the previous one: SentencePiece (and Hugging Face tokenizers) release
    # the GIL while they encode. Batches are written in order, so the output is the same;
    # at most three batches (read, encoding, writing) are held at once.
    encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
    in_flight: list[tuple] = []

    def write(future, batch_digests, batch_wheres):
        encoded = future.result()
        for position in np.flatnonzero(encoded.lengths == 0):
            problems.add("empty_document", reader.where(batch_wheres[position]), "no tokens after encoding")
        digests = b"".join(batch_digests)
        valid = valid_documents(digests, job.valid_fraction)
        document_digests = np.frombuffer(digests, dtype=np.uint8).reshape(-1, DIGEST_BYTES)
        kept = encoded.lengths > 0
        ends = np.cumsum(encoded.lengths, dtype=np.int64)
        for split, chosen in (("train", kept & ~valid), ("valid", kept & valid)):
            if chosen.any():
                outputs[split].append(_tokens_of(encoded.ids, ends, chosen), encoded.lengths[chosen],
                                      document_digests[chosen].tobytes())

    def flush():
        nonlocal texts, digests, wheres
        if texts:
            in_flight.append((encoder.submit(encode, texts), digests, wheres))
            texts, digests, wheres = [], [], []
        while len(in_flight) > 1:  # the one just submitted encodes while this writes the one before
            write(*in_flight.pop(0))

    try:
        batch_chars = 0
        for number, raw in _guarded(reader.documents()):
            text = normalize_text(raw)
            if not text:
                problems.add("empty_document", reader.where(number))
                continue
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError:     # lone surrogates, from JSON \\u escapes
                problems.add("invalid_utf8", reader.where(number), "lone surrogate; replaced by U+FFFD")
                text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
                data = text.encode("utf-8")
            text_bytes += len(data)
            texts.append(text)
            digests.append(hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest())
            wheres.append(number)
            batch_chars += len(text)
            if batch_chars >= BATCH_CHARS or len(texts) >= BATCH_DOCUMENTS:
                flush()
                batch_chars = 0
        flush()
        while in_flight:
            write(*in_flight.pop(0))
    except BaseException as error:  # nothing of this piece is kept; an unreadable input is reported
        encoder.shutdown(cancel_futures=True)
        for output in outputs.values():
            output.discard()
        if isinstance(error, InputReadError):
            return {"key": piece.key, "path": piece.path, "error": str(error), "problems": problems.to_json()}
        raise
    encoder.shutdown()
    for output in outputs.values():
        output.commit()
    marker = {
        "key": piece.key,
        "piece": asdict(piece),
        "documents": {split: outputs[split].documents for split in SPLITS},
        "tokens": {split: outputs[split].tokens for split in SPLITS},
        "text_bytes": text_bytes,
        "problems": problems.to_json(),
    }
    write_atomically(piece_path(job.work_dir, piece.key, "json"), json.dumps(marker, indent=1).encode())
    return marker
