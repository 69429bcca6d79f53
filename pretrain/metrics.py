"""Training and validation metrics: reductions over ranks, the AUC, model FLOPs, outputs.

Only rank 0 writes: TensorBoard events (OUTPUT/tensorboard/), one JSON line per step
(OUTPUT/metrics.jsonl) and per evaluation (OUTPUT/eval.jsonl), the progress line and
the run summary (OUTPUT/summary.json).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from deberta import DebertaConfig

AUC_BINS = 1000


def all_reduce_sum(values: list[float], device) -> list[float]:
    """One collective for a handful of scalars."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def auc_from_histograms(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """ROC AUC from score histograms of positives and negatives (ties within a bin count half):
    P(score of a random positive > score of a random negative)."""
    positive, negative = positive.double(), negative.double()
    if positive.sum() == 0 or negative.sum() == 0:
        return float("nan")
    negatives_below = torch.cumsum(negative, 0) - negative
    wins = (positive * (negatives_below + 0.5 * negative)).sum()
    return float(wins / (positive.sum() * negative.sum()))


def forward_flops_per_token(config: DebertaConfig, seq_len: int, target_fraction: float, mlm_head: bool) -> float:
    """Multiply-adds x 2 of one token's forward pass.

    Per layer: 2 x (4 h^2 attention projections + 2 h i feed-forward) for the weights, and
    2 x seq x h for each attention product: content scores, one per position term (c2p,
    p2c), and the weighted sum of values. The relative-position projections are per
    sequence (2S x h x h per term), spread over its tokens. The MLM output (h x vocab)
    runs only at the targets (target_fraction of tokens), through the EMD layers too.
    """
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    terms = len(config.pos_att_type) if config.relative_attention else 0
    per_layer = 2 * (4 * h * h + 2 * h * i) + 2 * seq_len * h * (2 + terms)
    per_layer += 2 * terms * 2 * config.relative_span * h * h / seq_len
    flops = layers * per_layer
    if mlm_head:
        flops += config.emd_layers * per_layer + target_fraction * 2 * (h * config.embedding_size
                                                                      + config.embedding_size * config.vocab_size)
    else:  # the RTD head: dense h x h and one logit
        flops += 2 * (h * h + h)
    return flops


class Outputs:
    """Rank 0's TensorBoard writer and JSON-lines files; no-ops on other ranks."""

    def __init__(self, output_dir: Path, rank: int, tensorboard: bool):
        self.rank = rank
        self.output_dir = output_dir
        self.writer = None
        self.tensorboard_dir = output_dir / "tensorboard"
        if rank == 0:
            output_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(self.tensorboard_dir))

    def print(self, text: str) -> None:
        if self.rank == 0:
            print(text, flush=True)

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.writer is not None:
            for name, value in values.items():
                if value is not None:
                    self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def jsonl(self, name: str, record: dict) -> None:
        if self.rank == 0:
            with open(self.output_dir / name, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def summary(self, record: dict) -> None:
        if self.rank == 0:
            (self.output_dir / "summary.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")

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
