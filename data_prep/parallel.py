"""Ranks, worker processes and progress.

Two levels of parallelism: MPI ranks (``mpiexec``/``srun``, one or many nodes) and, inside
each rank, ``--workers`` processes. Work is split into tasks whose outputs are files; ranks
exchange only small lists of what is done (bcast/gather), never data. Without an MPI
launcher no MPI library is loaded at all.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator, Sequence

# Variables by which common launchers announce how many ranks there are.
_LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS",
                            "SLURM_STEP_NUM_TASKS")


class SingleProcess:
    rank, size = 0, 1

    def barrier(self) -> None:
        pass

    def bcast(self, value):
        return value

    def gather(self, value) -> list:
        return [value]

    def abort(self, code: int) -> None:
        sys.exit(code)


class MPIRanks:
    def __init__(self):
        from mpi4py import MPI

        self._comm = MPI.COMM_WORLD
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()

    def barrier(self) -> None:
        # MPI implementations busy-wait in Barrier; a rank that finished early would take a
        # core from the worker processes of its node. Poll a non-blocking barrier instead.
        request = self._comm.Ibarrier()
        while not request.Test():
            time.sleep(0.02)

    def bcast(self, value):
        self.barrier()
        return self._comm.bcast(value, root=0)

    def gather(self, value) -> list | None:
        self.barrier()
        return self._comm.gather(value, root=0)

    def abort(self, code: int) -> None:
        self._comm.Abort(code)


def launched_ranks() -> int:
    for name in _LAUNCHER_SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def connect() -> SingleProcess | MPIRanks:
    """MPI when a launcher started several ranks, otherwise a single process."""
    expected = launched_ranks()
    if expected <= 1:
        return SingleProcess()
    try:
        ranks = MPIRanks()
    except ImportError as error:
        raise RuntimeError(f"launched as {expected} ranks but mpi4py cannot be imported ({error}); "
                           f"install it with `pip install -e .[mpi]`") from error
    if ranks.size != expected:
        raise RuntimeError(f"the launcher announces {expected} ranks but MPI sees {ranks.size}: "
                           f"with srun, pass --mpi=pmi2 (or pmix) so that the ranks find each other")
    return ranks


def share_of_rank(tasks: Sequence, weights: Sequence[float], rank: int, size: int) -> list:
    """This rank's tasks: heaviest first, each to the least loaded rank (ties: lowest rank).

    Only a function of the task list, so every rank computes the same assignment.
    """
    loads = [0.0] * size
    mine = []
    for weight, position in sorted(((w, i) for i, w in enumerate(weights)), key=lambda x: (-x[0], x[1])):
        target = min(range(size), key=lambda r: (loads[r], r))
        loads[target] += max(weight, 1.0)
        if target == rank:
            mine.append(tasks[position])
    return mine


class Workers:
    """``--workers`` processes: this one and ``count - 1`` more, started once and reused by
    every stage. Starting one costs an interpreter and the imports (about a CPU second), so
    this process, which would otherwise wait, works on the tasks too. With one worker,
    tasks run in this process only.

    ``start_method``: ``fork`` starts a helper as a copy of this process, imports and loaded
    tokenizer included, at no cost; ``spawn`` starts a new interpreter, as a child of an MPI
    rank must be (a forked copy inherits MPI state it must not use)."""

    def __init__(self, count: int, start_method: str = "spawn"):
        self.count = count
        self.start_method = start_method
        self._pool: ProcessPoolExecutor | None = None

    def run(self, function: Callable, tasks: Iterable) -> Iterator[tuple[Any, Any]]:
        """``(task, function(task))`` for every task, in the order they finish. A worker that
        dies (killed, out of memory) raises ``BrokenProcessPool`` here instead of hanging.

        Tasks are handed out in the given order: each helper process holds two (its current
        one and the next), and this process takes the next one whenever no helper has a
        result waiting."""
        pending = deque(tasks)
        if self.count <= 1 or len(pending) <= 1:
            for task in pending:
                yield task, function(task)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.count - 1,
                                             mp_context=multiprocessing.get_context(self.start_method))
        running: dict[Future, Any] = {}
        helpers = self.count - 1
        queued_per_helper = 2  # a helper that finishes starts its next task without waiting for this process
        while pending or running:
            # A helper's second task only while one is left for this process: with as many
            # tasks as processes (two input files on two workers), each process takes one.
            while pending and (len(running) < helpers or
                               (len(running) < queued_per_helper * helpers and len(pending) > 1)):
                task = pending.popleft()
                running[self._pool.submit(function, task)] = task
            finished = [future for future in running if future.done()]
            if not finished and pending:
                task = pending.popleft()
                yield task, function(task)
                continue
            if not finished:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                yield running.pop(future), future.result()

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc_info) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


class Progress:
    """A line on stderr every ``interval`` seconds and at the end: done/total, MB/s, ETA.

    Only rank 0 prints (its share is representative), so that logs of many ranks stay readable."""

    def __init__(self, stage: str, total_tasks: int, total_bytes: float, rank: int, size: int,
                 interval: float):
        self.stage, self.total_tasks, self.total_bytes = stage, total_tasks, total_bytes
        self.prefix = f"[{stage}{f' rank {rank}/{size}' if size > 1 else ''}]"
        self.interval, self.enabled = interval, rank == 0 and total_tasks > 0
        self.done_tasks, self.done_bytes, self.tokens = 0, 0.0, 0
        self.started = self._last_print = time.monotonic()

    def update(self, done_bytes: float, tokens: int = 0) -> None:
        self.done_tasks += 1
        self.done_bytes += done_bytes
        self.tokens += tokens
        now = time.monotonic()
        if now - self._last_print >= self.interval or self.done_tasks == self.total_tasks:
            self._last_print = now
            self.print()

    def print(self) -> None:
        if not self.enabled:
            return
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done_bytes / elapsed
        eta = f"{(self.total_bytes - self.done_bytes) / rate:.0f}s" if rate > 0 else "?"
        tokens = f"  {self.tokens / 1e6:.1f} M tokens" if self.tokens else ""
        print(f"{self.prefix} {self.done_tasks}/{self.total_tasks}  {self.done_bytes / 1e6:.1f} MB  "
              f"{rate / 1e6:.1f} MB/s{tokens}  elapsed {elapsed:.0f}s  eta {eta}",
              file=sys.stderr, flush=True)
