"""Run outputs, written by rank 0 only (no-ops elsewhere), the same for every command:

    OUTPUT/metrics.jsonl     one JSON line per optimizer step
    OUTPUT/eval.jsonl        one JSON line per evaluation
    OUTPUT/tensorboard/      the same values as TensorBoard scalars (train/..., eval/...)
    OUTPUT/summary.json      how the run ended (written atomically)
and the progress line on stdout. A run that resumes from a checkpoint of step N calls
``Outputs.truncate_to(N)`` first: the lines and TensorBoard points of later steps, written
by the attempt that was stopped, are dropped, so that each step appears once.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from deberta.atomic import atomic_write


class Outputs:
    def __init__(self, output_dir: Path, rank: int, tensorboard: bool):
        self.rank = rank
        self.output_dir = Path(output_dir)
        self.writer = None
        self.tensorboard_dir = self.output_dir / "tensorboard"
        if rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(self.tensorboard_dir))

    def print(self, text: str) -> None:
        if self.rank == 0:
            print(text, flush=True)

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def jsonl(self, name: str, record: dict) -> None:
        if self.rank == 0:
            with open(self.output_dir / name, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def write_json(self, name: str, record: dict) -> None:
        if self.rank == 0:
            atomic_write(self.output_dir / name, json.dumps(record, indent=1) + "\n")

    def truncate_to(self, step: int, logs: tuple[str, ...] = ("metrics.jsonl", "eval.jsonl")) -> None:
        """Forget what was logged after ``step`` (0: everything), before a run resumes from a
        checkpoint of that step: the JSON-lines logs keep their records up to it, and TensorBoard
        hides the later points of the earlier attempt (``purge_step``)."""
        if self.rank != 0:
            return
        for name in logs:
            truncate_jsonl(self.output_dir / name, step)
        if self.writer is not None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer.close()
            self.writer = SummaryWriter(str(self.tensorboard_dir), purge_step=step + 1)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def truncate_jsonl(path: Path, last_step: int) -> int:
    """Keep the records of ``path`` whose ``step`` is at most ``last_step`` (and those without
    one), dropping a last line that a kill cut short; the file is replaced atomically. Returns
    the number of lines dropped (0 when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record = json.loads(line) if line.endswith("\n") else None
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and record.get("step", last_step) <= last_step:
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write(path, "".join(kept))
    return len(lines) - len(kept)


class Throughput:
    """Tokens/s, model TFLOP/s and the share of time spent waiting for data, over the
    steps since the last report."""

    def __init__(self, flops_per_token: float):
        self.flops_per_token = flops_per_token
        self.start, self.tokens, self.data_wait = time.perf_counter(), 0, 0.0

    def add(self, tokens: int, data_wait: float) -> None:
        self.tokens += tokens
        self.data_wait += data_wait

    def report(self) -> tuple[float, float, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        tokens_per_s, wait = self.tokens / elapsed, self.data_wait / elapsed
        self.start, self.tokens, self.data_wait = time.perf_counter(), 0, 0.0
        return tokens_per_s, tokens_per_s * self.flops_per_token / 1e12, wait


def eta(seconds: Optional[float]) -> str:
    if seconds is None or seconds != seconds:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
