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

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data_prep import ShardedDataset
from deberta.cli import option

from .masking import IGNORE, Masker

TRAIN_STREAM, VALID_STREAM = 0, 1


@dataclass
class DataConfig:
    data_dir: str = option("", "folder written by `python -m data_prep shard` (required)")
    num_workers: int = option(2, "loader processes per rank that read and mask ahead")
    prefetch_batches: int = option(4, "micro-batches each worker keeps ready")
    eval_samples: int = option(1024, "validation sequences per evaluation (all ranks together)")

    def __post_init__(self):
        if not self.data_dir:
            raise ValueError("--data_dir is required (a folder written by `python -m data_prep shard`)")
        if self.num_workers < 0 or self.prefetch_batches < 1 or self.eval_samples < 1:
            raise ValueError(f"num_workers={self.num_workers} must be >= 0, prefetch_batches="
                             f"{self.prefetch_batches} and eval_samples={self.eval_samples} >= 1")


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
        masked, labels = self.masker(ids, i, self.stream, epoch)
        length, n = self.sequences.seq_len, ids.size
        out = {"input_ids": np.full(length, self.pad_id, np.int64), "labels": np.full(length, IGNORE, np.int64),
               "original_ids": np.full(length, self.pad_id, np.int64),
               "attention_mask": np.zeros(length, np.int64)}
        out["input_ids"][:n], out["labels"][:n], out["original_ids"][:n] = masked, labels, ids
        out["attention_mask"][:n] = 1
        return out


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
                      persistent_workers=False, generator=torch.Generator().manual_seed(0))


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
            samples.append(filler)
        yield collate(samples)
