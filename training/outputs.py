"""Run outputs, written by rank 0 only (no-ops elsewhere), the same for every command:

    OUTPUT/metrics.jsonl     one JSON line per optimizer step
    OUTPUT/eval.jsonl        one JSON line per evaluation
    OUTPUT/tensorboard/      the same values as TensorBoard scalars (train/..., eval/...)
    OUTPUT/summary.json      how the run ended (written atomically)
and the progress line on stdout.
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

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
