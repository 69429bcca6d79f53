"""What makes a finetuning run resumable: its checkpoints, its data order, the settings a
resume must keep, and SIGTERM noted for the next step boundary.

Checkpoints are the training core's (``training.checkpoint.CheckpointManager``), in
``OUTPUT/checkpoints/step_N``: DeepSpeed's engine files (weights, optimizer, learning-rate
schedule, fp16 loss scale), every rank's python/numpy/torch/CUDA RNG, and
``checkpoint.json`` with the trainer's state, written last; ``latest`` moves only after
it, so a save killed at any point leaves the previous checkpoint. The trainer's state is
the step, the data position (epoch, samples of it consumed), the best evaluation so far,
the evaluations since the last improvement, the step of the last evaluation, the loss
sums since the last progress line, and the settings that define the run
(``run_settings``). A run that completes writes ``summary.json`` and removes its
checkpoints (``best/`` is its model); the same command run again then does nothing.
"""
from __future__ import annotations

import dataclasses
import json
import math
import signal
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch.utils.data import Sampler

from training.checkpoint import CHECKPOINT_FILE, CheckpointManager, ResumeError, check_same_run

from .config import FinetuneConfig

__all__ = ["CHECKPOINT_FILE", "CheckpointManager", "EpochOrder", "ResumeError", "StopSignal", "check_same_run",
           "completed_run", "run_settings"]

# Settings a resumed run may change: where and how often it reports and saves, and how many
# runs --seeds makes. Every other field of the run and optimizer sections defines the run;
# the engine section counts through what it resolves to (batch sizes, precision, ZeRO stage),
# so that moving a value between the DeepSpeed JSON and the flags is not a change.
MAY_CHANGE = frozenset({"output_dir", "seeds", "log_interval", "progress_bar", "tensorboard", "eval_batch_size",
                        "save_interval", "keep_checkpoints", "force_resume", "test",
                        # packed batches and other attention kernels compute what padded eager does
                        "unpadded", "attention_backend"})


def run_settings(config: FinetuneConfig, ds_config: dict) -> dict:
    """The settings that define a run (flat, by field name), with the resolved engine values."""
    settings = {f.name: getattr(section, f.name) for section in (config.run, config.optimizer)
                for f in dataclasses.fields(section) if f.name not in MAY_CHANGE}
    settings.update(global_batch_size=ds_config["train_batch_size"],
                    micro_batch_size=ds_config["train_micro_batch_size_per_gpu"],
                    grad_accum=ds_config["gradient_accumulation_steps"],
                    precision="fp16" if ds_config["fp16"]["enabled"] else "bf16" if ds_config["bf16"]["enabled"]
                    else "fp32",
                    zero_stage=ds_config.get("zero_optimization", {}).get("stage", 0))
    return settings


def completed_run(output_dir: Path) -> Optional[dict]:
    """The summary of a run that completed in ``output_dir`` (its settings under "settings"), else None."""
    try:
        summary = json.loads((Path(output_dir) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return summary if summary.get("status") == "completed" and "settings" in summary else None


class EpochOrder(Sampler):
    """One rank's training order: a permutation of the data that depends only on (seed, epoch),
    dealt out to the ranks in turn (as ``DistributedSampler``, padded by wrapping around so
    that every rank gets as many), which can start part-way into an epoch: after ``consumed``
    samples of all ranks together (``set_position``), as a resumed run does."""

    def __init__(self, size: int, seed: int, rank: int, world: int):
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.epoch, self.consumed = 0, 0

    def set_position(self, epoch: int, consumed: int = 0) -> None:
        self.epoch, self.consumed = epoch, consumed

    def _remaining(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        order = order + order[: math.ceil(self.size / self.world) * self.world - self.size]
        return order[self.consumed:]

    def __iter__(self) -> Iterator[int]:
        return iter(self._remaining()[self.rank::self.world])

    def __len__(self) -> int:
        """Samples this rank has left in the epoch from the current position."""
        return max(0, math.ceil(self.size / self.world) - math.ceil(self.consumed / self.world))


class StopSignal:
    """SIGTERM noted, not obeyed at once: the run saves at the end of the step it is in and
    exits 0 (``training.sync`` carries the request to every rank in the step's all-reduce).

        with StopSignal() as stop:     # installs the handler; nested entries keep the outer one
            ... stop.requested ...
    """

    def __init__(self):
        self.requested = False
        self._depth, self._previous = 0, None

    def __enter__(self) -> "StopSignal":
        if self._depth == 0:
            self._previous = signal.signal(signal.SIGTERM, self._note)
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            signal.signal(signal.SIGTERM, self._previous)

    def _note(self, signum, frame) -> None:
        self.requested = True
