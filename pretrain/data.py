"""Pretraining batches from data_prep's memory-mapped shards.

Order. Training sample positions 0, 1, 2, ... map to sequence ids through one
permutation of the train split per epoch, drawn from (seed, epoch). An optimizer step
that starts at position p (the samples consumed before it; p = s*G at step s with a
fixed G) consumes [p, p+G), G = global batch = micro x accumulation x ranks;
micro-step a of rank r takes the ``micro`` positions starting at p + (a*ranks + r)*micro.
So the samples of each step depend on (seed, data, G) only, not on how many ranks share
them, and a resumed run continues at the consumed-samples count it saved.

Masking. Position p is sequence i = perm_e[p mod N] of epoch e = p // N; its mask is a
function of (seed, i, e) (pretrain/masking.py): new in every epoch, and as rank-free and
resumable as the order. Validation sequences keep the mask of epoch 0. The masks are
computed in the loader's worker processes, which prefetch ahead of the accelerator.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from data_prep import ShardedDataset
from data_prep.checks import is_stamped, shard_entries, stamp_key, verify_shards, write_stamp
from data_prep.dataset import load_manifest
from deberta.cli import option
from deberta.errors import InputError
from training.distributed import data_worker_init

from .masking import IGNORE, Masker

TRAIN_STREAM, VALID_STREAM = 0, 1
# Per sample: -1, or the sequence id when it held token ids outside the vocabulary (then
# replaced by padding, so that the step runs to its agreement and every rank stops there).
BAD_SEQUENCE = "bad_sequence"


@dataclass
class DataConfig:
    data_dir: str = option("", "folder written by `python -m data_prep shard` (required)")
    num_workers: int = option(2, "loader processes per rank that read and mask ahead")
    prefetch_batches: int = option(4, "micro-batches each worker keeps ready")
    eval_samples: int = option(1024, "validation sequences per evaluation (all ranks together)")
    verify_data: Literal["auto", "full", "sizes"] = option(
        "auto", "check the shards against the manifest at start: auto = sha256 of every file (one reader per "
                "node, each a share) unless a stamp beside the data says this state was checked; full = again now; "
                "sizes = file sizes only")

    def __post_init__(self):
        if not self.data_dir:
            raise ValueError("--data_dir is required (a folder written by `python -m data_prep shard`)")
        if self.num_workers < 0 or self.prefetch_batches < 1 or self.eval_samples < 1:
            raise ValueError(f"num_workers={self.num_workers} must be >= 0, prefetch_batches="
                             f"{self.prefetch_batches} and eval_samples={self.eval_samples} >= 1")


def check_shards(data_dir: str | Path, mode: str, fallback_dir: Path, log: Callable[[str], None]) -> None:
    """The shards' sha256 against the manifest, read once per state of the data.

    Every rank calls it. Rank 0 looks for a stamp (``data_prep.checks``: the manifest and the
    files' sizes and mtimes it vouches for); without one (or with ``mode`` "full") the
    readers, local rank 0 of each node, hash a share of the shards each, so the data is read
    once over the whole job whatever its size, and rank 0 writes the stamp. A restart then
    costs one ``stat`` per file on rank 0. Assumes every node sees the same files. The check
    must end within the collective timeout (``DEBERTA_COLLECTIVE_TIMEOUT``, 30 min): for a
    corpus too large for that on the nodes at hand, run ``python -m data_prep verify`` first
    (it writes the same stamp).
    """
    if mode == "sizes":
        return  # ShardedDataset has compared every file's size with the manifest
    rank, world = dist.get_rank(), dist.get_world_size()
    decision: list = [None]
    if rank == 0:
        try:
            key = stamp_key(data_dir)
            decision = [("check", key) if mode == "full" or not is_stamped(data_dir, key, fallback_dir) else ("ok", key)]
        except OSError as error:
            decision = [("error", f"{data_dir}: cannot read the shards to check them ({error})")]
    dist.broadcast_object_list(decision, src=0)
    status, value = decision[0]
    if status == "error":
        raise InputError(value)
    if status == "ok":
        log(f"{data_dir}: shards checked against the manifest before (stamp found; --verify_data full checks again)")
        return
    is_reader = int(os.environ.get("LOCAL_RANK", "0")) == 0
    flags: list = [None] * world
    dist.all_gather_object(flags, is_reader)
    readers = [r for r, reads in enumerate(flags) if reads] or [0]
    manifest = load_manifest(data_dir)
    entries = shard_entries(manifest)
    log(f"{data_dir}: checking the sha256 of {len(entries)} shards against the manifest ({len(readers)} "
        f"reader(s), one per node)")
    started = time.perf_counter()
    mine = entries[readers.index(rank)::len(readers)] if rank in readers else []
    found: list = [None] * world
    # The node's reader hashes several files at once: the rest of the node waits for it anyway.
    threads = min(8, len(os.sched_getaffinity(0)))
    dist.all_gather_object(found, verify_shards(data_dir, manifest, mine, threads))
    problems = [problem for rank_problems in found for problem in rank_problems]
    if problems:
        listed = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise InputError(f"{data_dir}: the shards do not match their manifest: {listed}. Run `python -m data_prep "
                         f"verify {data_dir}`, then restore the files or write the data again")
    if rank == 0:
        stamp = write_stamp(data_dir, value, fallback_dir)
        log(f"{data_dir}: {len(entries)} shards intact ({time.perf_counter() - started:.1f} s); "
            + (f"stamp {stamp}" if stamp else "no stamp written (no writable folder): the next start checks again"))


class MaskedSequences(Dataset):
    """Sequence i of a split -> masked inputs, labels and attention mask, padded to seq_len.

    The key is ``i`` (masked as in epoch 0) or ``(i, epoch)`` (what ``TrainOrder`` yields)."""

    def __init__(self, sequences: ShardedDataset, masker: Masker, stream: int, pad_id: int):
        self.sequences, self.masker, self.stream, self.pad_id = sequences, masker, stream, pad_id

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, np.ndarray]:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        ids = self.sequences[i].astype(np.int64)
        # The loader's worker checks every sequence (a max over seq_len ids, nothing next to
        # the masking): ids past the vocabulary would index past the embedding table.
        bad = ids.size > 0 and int(ids.max()) >= self.sequences.vocab_size
        if bad:
            ids = np.where(ids < self.sequences.vocab_size, ids, self.pad_id)
        masked, labels = self.masker(ids, i, self.stream, epoch)
        length, n = self.sequences.seq_len, ids.size
        out = {"input_ids": np.full(length, self.pad_id, np.int64), "labels": np.full(length, IGNORE, np.int64),
               "original_ids": np.full(length, self.pad_id, np.int64),
               "attention_mask": np.zeros(length, np.int64)}
        out["input_ids"][:n], out["labels"][:n], out["original_ids"][:n] = masked, labels, ids
        out["attention_mask"][:n] = 1
        out[BAD_SEQUENCE] = np.int64(i if bad else -1)
        return out

    def describe_bad(self, sequence_ids) -> str:
        """Where the sequences with ids outside the vocabulary are, and what to do."""
        places = [self.sequences.locate(int(i)) for i in sequence_ids]
        named = ", ".join(f"{path} sequence {within}" for path, within in places[:3])
        more = f" and {len(places) - 3} more" if len(places) > 3 else ""
        return (f"token ids outside the vocabulary of {self.sequences.vocab_size} in {named}{more}: the shard is "
                f"damaged or was made with another tokenizer; run `python -m data_prep verify "
                f"{self.sequences.data_dir}`")


class TrainOrder:
    """(sequence id, epoch) of the samples in the micro-batches of one rank, from a global
    position onward."""

    def __init__(self, num_sequences: int, seed: int, micro: int, accumulation: int, rank: int, world: int):
        if num_sequences < 1:
            raise ValueError("the train split is empty")
        self.n, self.seed = num_sequences, seed
        self.micro, self.accumulation, self.rank, self.world = micro, accumulation, rank, world
        self.global_batch = micro * accumulation * world
        self._epoch, self._perm = -1, None

    def sample(self, position: int) -> tuple[int, int]:
        """(sequence id, epoch) at a global sample position."""
        epoch, offset = divmod(position, self.n)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return int(self._perm[offset]), epoch

    def sequence(self, position: int) -> int:
        return self.sample(position)[0]

    def micro_batches(self, position: int) -> Iterator[list[tuple[int, int]]]:
        """Endless: this rank's micro-batches, as (sequence id, epoch) pairs, of the steps that
        start at sample ``position`` (the samples consumed so far), G positions per step."""
        while True:
            for a in range(self.accumulation):
                first = position + (a * self.world + self.rank) * self.micro
                yield [self.sample(p) for p in range(first, first + self.micro)]
            position += self.global_batch


class _Resumable:
    """A batch sampler over TrainOrder from a sample position (iterated once per loader)."""

    def __init__(self, order: TrainOrder, position: int):
        self.order, self.position = order, position

    def __iter__(self):
        return self.order.micro_batches(self.position)


def collate(samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}


def train_loader(dataset: MaskedSequences, order: TrainOrder, position: int, config: DataConfig,
                 pin_memory: bool) -> DataLoader:
    # A private generator: building the loader's iterator must not draw from the global
    # torch RNG, whose state (dropout, generator sampling) is part of exact resume.
    return DataLoader(dataset, batch_sampler=_Resumable(order, position), collate_fn=collate,
                      num_workers=config.num_workers, pin_memory=pin_memory,
                      prefetch_factor=config.prefetch_batches if config.num_workers else None,
                      persistent_workers=False, generator=torch.Generator().manual_seed(0),
                      worker_init_fn=data_worker_init)


def valid_batches(dataset: MaskedSequences, config: DataConfig, micro: int, rank: int, world: int
                  ) -> Iterator[dict[str, torch.Tensor]]:
    """The first ``eval_samples`` validation sequences, split over ranks in micro-batches.

    Every rank yields the same number of batches (the last may be partly padding with
    all-ignore labels), so collective calls inside evaluation stay matched.
    """
    total = min(config.eval_samples, len(dataset))
    per_rank = -(-total // world)
    mine = list(range(rank * per_rank, min((rank + 1) * per_rank, total)))
    for begin in range(0, per_rank, micro):
        ids = mine[begin: begin + micro]
        samples = [dataset[i] for i in ids]
        while len(samples) < micro:  # filler: no targets, no real tokens
            filler = dataset[0]
            filler["labels"][:] = IGNORE
            filler["attention_mask"][:] = 0
            filler[BAD_SEQUENCE] = np.int64(-1)
            samples.append(filler)
        yield collate(samples)
