"""Stage 3 of ``shard``: pack a split's token stream into fixed-size shards.

The stream of a split is the concatenation, in piece order, of each piece's documents of
that split less its dropped duplicates. A shard holds a fixed number of consecutive
sequences of the stream, so its bytes depend only on the corpus and the settings; any
rank can write any shard, reading the parts of the pieces it overlaps.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .dedup import load_dropped
from .encoding import piece_path
from .shard_format import Packing, ShardIndex, sha256_file, write_shard

# Sequences packed per write: a few MB, so a writer's memory does not grow with shard size.
SEQUENCES_PER_WRITE = 8192


@dataclass(frozen=True)
class PieceSpan:
    """A piece's kept tokens of a split, and where they begin in the split's stream."""

    key: str
    stream_start: int
    tokens: int


@dataclass(frozen=True)
class ShardJob:
    work_dir: str
    output_dir: str
    name: str
    split: str
    dtype: str
    packing: Packing
    first_sequence: int
    num_sequences: int
    first_token: int
    num_tokens: int
    pieces: tuple[PieceSpan, ...]
    dedup_dir: str | None        # where the dropped duplicates are listed, with --dedup


class KeptTokens:
    """One piece's tokens of one split without its dropped duplicates, addressed by
    position in that kept sequence. Kept documents that are adjacent in the file form a
    run, so reading costs one read per run (one run when nothing was dropped).

    Reads, not a memory map: mapped pages would count in the writer's resident memory
    until the whole shard is written."""

    def __init__(self, work_dir: str, piece: str, split: str, dtype: np.dtype, dedup_dir: str | None):
        self.path, self.dtype = piece_path(work_dir, piece, f"{split}.tok"), dtype
        lengths = np.fromfile(piece_path(work_dir, piece, f"{split}.len"), dtype="<u4").astype(np.int64)
        file_starts = np.cumsum(lengths) - lengths
        keep = np.ones(len(lengths), dtype=bool)
        if dedup_dir:
            keep[load_dropped(dedup_dir, piece, split)] = False
        kept_lengths, kept_file_starts = lengths[keep], file_starts[keep]
        self.document_starts = np.cumsum(kept_lengths) - kept_lengths
        self.total = int(kept_lengths.sum())
        starts_run = np.ones(len(kept_lengths), dtype=bool)
        starts_run[1:] = kept_file_starts[1:] != kept_file_starts[:-1] + kept_lengths[:-1]
        self.run_starts = self.document_starts[starts_run]
        self.run_file_starts = kept_file_starts[starts_run]

    def slice(self, begin: int, end: int) -> np.ndarray:
        first = np.searchsorted(self.run_starts, begin, side="right") - 1
        last = np.searchsorted(self.run_starts, end, side="left")
        parts = []
        for run in range(first, last):
            run_end = self.run_starts[run + 1] if run + 1 < len(self.run_starts) else self.total
            lo, hi = max(begin, self.run_starts[run]), min(end, run_end)
            file_start = int(lo + self.run_file_starts[run] - self.run_starts[run])
            parts.append(np.fromfile(self.path, dtype=self.dtype, count=int(hi - lo),
                                     offset=file_start * self.dtype.itemsize))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _stream_reader(job: ShardJob):
    dtype = np.dtype(job.dtype)
    sources = [(span, KeptTokens(job.work_dir, span.key, job.split, dtype, job.dedup_dir)) for span in job.pieces]

    def read(begin: int, end: int) -> np.ndarray:
        parts = []
        for span, kept in sources:
            lo, hi = max(begin, span.stream_start), min(end, span.stream_start + span.tokens)
            if lo < hi:
                parts.append(kept.slice(lo - span.stream_start, hi - span.stream_start))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    document_starts = [kept.document_starts + span.stream_start for span, kept in sources]
    return read, document_starts


def shard_record(job: ShardJob, bin_bytes: int, bin_sha256: str, idx_bytes: int, idx_sha256: str,
                 documents: int) -> dict:
    return {"name": job.name, "bytes": bin_bytes, "sha256": bin_sha256, "index_bytes": idx_bytes,
            "index_sha256": idx_sha256, "sequences": job.num_sequences, "documents": documents,
            "tokens": job.num_tokens, "first_sequence": job.first_sequence, "first_token": job.first_token}


def write_shard_job(job: ShardJob) -> dict:
    """Write one shard, or, if an earlier run finished it, describe the one on disk."""
    output = Path(job.output_dir)
    bin_path, idx_path = output / f"{job.name}.bin", output / f"{job.name}.idx"
    if idx_path.is_file():
        index = ShardIndex.read(idx_path)
        if (index.first_sequence, index.num_sequences, index.first_token, index.num_tokens) != \
                (job.first_sequence, job.num_sequences, job.first_token, job.num_tokens):
            raise RuntimeError(f"{idx_path}: left by a run with other settings; remove {output} and start again")
        if bin_path.stat().st_size != index.bin_bytes:
            raise RuntimeError(f"{bin_path}: {bin_path.stat().st_size} bytes, its index says {index.bin_bytes}")
        return shard_record(job, index.bin_bytes, sha256_file(bin_path), idx_path.stat().st_size,
                            sha256_file(idx_path), index.num_documents)

    read, starts_per_piece = _stream_reader(job)
    end_token = job.first_token + job.num_tokens
    width = job.packing.text_per_sequence

    def packed_chunks() -> Iterator[np.ndarray]:
        for first in range(0, job.num_sequences, SEQUENCES_PER_WRITE):
            begin = job.first_token + first * width
            end = min(begin + SEQUENCES_PER_WRITE * width, end_token)
            yield job.packing.pack(read(begin, end), np.dtype(job.dtype))

    starts = np.concatenate(starts_per_piece) if starts_per_piece else np.empty(0, dtype=np.int64)
    starts = starts[(starts >= job.first_token) & (starts < end_token)]
    index = ShardIndex(itemsize=np.dtype(job.dtype).itemsize, seq_len=job.packing.seq_len,
                       first_sequence=job.first_sequence, num_sequences=job.num_sequences,
                       first_token=job.first_token, num_tokens=job.num_tokens,
                       num_documents=len(starts), bin_bytes=0, document_starts=starts.astype("<u8"))
    files = write_shard(bin_path, idx_path, packed_chunks(), index)
    return shard_record(job, files.bin_bytes, files.bin_sha256, files.idx_bytes, files.idx_sha256, len(starts))
