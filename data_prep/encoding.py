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
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from deberta.tokenizer import SentencePieceTokenizer, load_tokenizer

from .inputs import UNREADABLE_ERRORS, Piece, PieceReader, ProblemLog, normalize_text
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


def is_valid_document(digest: bytes, valid_fraction: float) -> bool:
    """The first 8 digest bytes as a number in [0, 1) below ``valid_fraction``."""
    return int.from_bytes(digest[:8], "little") < valid_fraction * 2.0**64


@functools.lru_cache(maxsize=2)
def single_core_encoder(tokenizer_path: str) -> Callable[[list[str]], list[list[int]]]:
    """Batch encoding on one core: parallelism comes from workers and ranks, and the
    tokenizers' own thread pools (all cores by default) would oversubscribe the machine."""
    tokenizer = load_tokenizer(tokenizer_path)
    if isinstance(tokenizer, SentencePieceTokenizer):
        processor, spm_unk, unk = tokenizer.spm, tokenizer.spm.unk_id(), tokenizer.unk_token_id

        def encode(texts: list[str]) -> list[list[int]]:
            batch = processor.encode(texts, num_threads=1)
            if spm_unk == unk:
                return batch
            return [[unk if i == spm_unk else i for i in ids] for ids in batch]

        return encode
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    return tokenizer.encode_batch


class InputReadError(Exception):
    pass


def _guarded(documents: Iterator) -> Iterator:
    """Reading errors become ``InputReadError``; errors of this code stay what they are."""
    try:
        yield from documents
    except UNREADABLE_ERRORS as error:
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

    def append(self, token_lists: list[list[int]], digests: list[bytes]) -> None:
        lengths = np.fromiter(map(len, token_lists), dtype="<u4", count=len(token_lists))
        total = int(lengths.sum(dtype=np.uint64))
        ids = np.fromiter(itertools.chain.from_iterable(token_lists), dtype=self.dtype, count=total)
        ids.tofile(self.files["tok"])
        lengths.tofile(self.files["len"])
        self.files["hash"].write(b"".join(digests))
        self.documents += len(token_lists)
        self.tokens += total

    def commit(self) -> None:
        for kind in self.KINDS:
            self.files[kind].close()
            commit(self.temporary[kind], self.final[kind])

    def discard(self) -> None:
        for kind in self.KINDS:
            self.files[kind].close()
            self.temporary[kind].unlink(missing_ok=True)


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
        by_split = {split: ([], []) for split in SPLITS}
        for ids, digest, number in zip(future.result(), batch_digests, batch_wheres):
            if not ids:
                problems.add("empty_document", reader.where(number), "no tokens after encoding")
                continue
            token_lists, split_digests = by_split["valid" if is_valid_document(digest, job.valid_fraction) else "train"]
            token_lists.append(ids)
            split_digests.append(digest)
        for split, (token_lists, split_digests) in by_split.items():
            outputs[split].append(token_lists, split_digests)

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
    except InputReadError as error:
        encoder.shutdown(cancel_futures=True)
        for output in outputs.values():
            output.discard()
        return {"key": piece.key, "path": piece.path, "error": str(error),
                "problems": problems.to_json()}
    except BaseException:
        encoder.shutdown(cancel_futures=True)
        for output in outputs.values():
            output.discard()
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
