"""Exact deduplication (``--dedup``): of documents with the same normalised text, the first
in corpus order stays.

Corpus order numbers the documents of a split by piece, then by position in the piece.
Digests are partitioned by their last 8 bytes into ``num_partitions`` (a function of the
corpus size, not of the process count), so each partition is one bounded task:

1. ``find_duplicates`` reads the digests of one partition from every piece and writes the
   ordinals of all copies but the first (``SPLIT-PPPPP.npy``).
2. ``apply_duplicates`` gives each piece the local indices of its dropped documents
   (``KEY.SPLIT.dropped.npy``) and a marker with the dropped counts (``KEY.json``).

These files live in a folder named after the list of pieces (``dedup_dir``), since
ordinals mean something only for that list.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .encoding import SPLITS, piece_path
from .shard_format import commit, temporary_name, write_atomically

# Digests held at once by one partition task: 16 bytes + an 8-byte ordinal each, and a
# sort, keep it near 200 MB.
DOCUMENTS_PER_PARTITION = 4_000_000


def num_partitions(total_documents: int) -> int:
    return max(1, -(-total_documents // DOCUMENTS_PER_PARTITION))


@dataclass(frozen=True)
class PieceDocuments:
    """Where a piece's documents of one split sit in corpus order."""

    key: str
    first_ordinal: int
    documents: int


@dataclass(frozen=True)
class PartitionJob:
    work_dir: str
    dedup_dir: str
    split: str
    partition: int
    num_partitions: int
    pieces: tuple[PieceDocuments, ...]


def partition_path(dedup_dir: str | Path, split: str, partition: int) -> Path:
    return Path(dedup_dir) / f"{split}-{partition:05d}.npy"


def _save_npy(path: Path, array: np.ndarray) -> None:
    temporary = temporary_name(path)
    with open(temporary, "wb") as f:
        np.save(f, array)
    commit(temporary, path)


def find_duplicates(job: PartitionJob) -> int:
    digests, ordinals = [], []
    for piece in job.pieces:
        if piece.documents == 0:
            continue
        halves = np.fromfile(piece_path(job.work_dir, piece.key, f"{job.split}.hash"), dtype="<u8").reshape(-1, 2)
        mine = np.flatnonzero(halves[:, 1] % np.uint64(job.num_partitions) == job.partition)
        digests.append(halves[mine])
        ordinals.append(mine.astype(np.int64) + piece.first_ordinal)
    digests = np.concatenate(digests) if digests else np.empty((0, 2), dtype="<u8")
    ordinals = np.concatenate(ordinals) if ordinals else np.empty(0, dtype=np.int64)
    order = np.lexsort((ordinals, digests[:, 0], digests[:, 1]))   # by digest, then ordinal
    digests, ordinals = digests[order], ordinals[order]
    repeats = np.all(digests[1:] == digests[:-1], axis=1)
    dropped = np.sort(ordinals[1:][repeats])
    _save_npy(partition_path(job.dedup_dir, job.split, job.partition), dropped)
    return len(dropped)


@dataclass(frozen=True)
class ApplyJob:
    work_dir: str
    dedup_dir: str
    piece: str                   # key
    num_partitions: dict         # split -> partitions of that split
    first_ordinal: dict          # split -> ordinal of the piece's first document


def dedup_marker_path(dedup_dir: str | Path, piece: str) -> Path:
    return Path(dedup_dir) / f"{piece}.json"


def dropped_path(dedup_dir: str | Path, piece: str, split: str) -> Path:
    return Path(dedup_dir) / f"{piece}.{split}.dropped.npy"


def apply_duplicates(job: ApplyJob) -> dict:
    counts = {}
    for split in SPLITS:
        lengths = np.fromfile(piece_path(job.work_dir, job.piece, f"{split}.len"), dtype="<u4")
        first, end = job.first_ordinal[split], job.first_ordinal[split] + len(lengths)
        local = []
        for partition in range(job.num_partitions[split]):
            ordinals = np.load(partition_path(job.dedup_dir, split, partition), mmap_mode="r")
            low, high = np.searchsorted(ordinals, [first, end])
            local.append(np.asarray(ordinals[low:high]) - first)
        dropped = np.sort(np.concatenate(local)) if local else np.empty(0, dtype=np.int64)
        _save_npy(dropped_path(job.dedup_dir, job.piece, split), dropped)
        counts[split] = {"documents": int(len(dropped)),
                         "tokens": int(lengths[dropped].sum(dtype=np.uint64))}
    write_atomically(dedup_marker_path(job.dedup_dir, job.piece), json.dumps(counts).encode())
    return counts


def load_dropped(dedup_dir: str | Path, piece: str, split: str) -> np.ndarray:
    return np.load(dropped_path(dedup_dir, piece, split))
