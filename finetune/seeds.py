"""Runs of one task, one per seed, reported as papers report them: every run, and per metric
the median and the spread (min, max, standard deviation).

    python -m finetune --task rte ... --output_dir ft/rte --seeds 5       # seeds 42 ... 46
    python -m finetune --task rte ... --output_dir ft/rte --seeds 1,7,9

Each run is an ordinary run in OUTPUT/seed_<s>/ (its eval_results.json, best/, logs and
checkpoints); then OUTPUT/seeds_summary.json holds each run's best evaluation and the
statistics, and a table is printed. The runs follow one another in the same processes (under
a launcher, on the same ranks), each with a model, engine, data and RNG of its own, so each
ends exactly as a single run with its seed would. Run again, the command skips the seeds that
completed (their settings checked as a resume checks them), resumes the one that was stopped
and starts the others. One seed (the default, --seeds 1) runs in OUTPUT itself.
"""
from __future__ import annotations

import dataclasses
import gc
import statistics
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from training.ds_config import resolve_ds_config
from training.outputs import Outputs

from .checkpoint import StopSignal, check_same_run, completed_run, run_settings
from .config import DEFAULT_MICRO_BATCH, FinetuneConfig
from .trainer import Trainer

SUMMARY_FILE = "seeds_summary.json"
NOT_METRICS = ("step", "epoch")


def with_seed(config: FinetuneConfig, seed: int, output_dir: Path) -> FinetuneConfig:
    return dataclasses.replace(config, run=dataclasses.replace(config.run, seed=seed, output_dir=str(output_dir)))


def run_once(config: FinetuneConfig, stop: StopSignal) -> tuple[str, Optional[dict]]:
    """One run: (how it ended, its best evaluation). A run that completed before with the same
    settings is not run again."""
    output_dir = Path(config.run.output_dir)
    done = completed_run(output_dir)
    rank, world = dist.get_rank(), dist.get_world_size()
    if done is not None:
        settings = run_settings(config, resolve_ds_config(config.engine, config.optimizer, world,
                                                          default_micro=DEFAULT_MICRO_BATCH))
        out = Outputs(output_dir, rank, False)
        check_same_run(done["settings"], settings, output_dir, output_dir, config.run.force_resume, out.print)
        best = done["best"] or {}
        out.print(f"{output_dir}: completed before (best at step {best.get('step')}: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in best.items() if isinstance(v, float))
                  + "); nothing to do. Another --output_dir starts a new run")
        return "completed", done["best"]
    trainer = Trainer(config, stop)
    try:
        best = trainer.train()
        return trainer.status, best
    finally:
        # Nothing of this run may reach the next one: the engine, its optimizer state and the
        # device memory go now, not whenever the collector gets to them (or never: ``close``).
        trainer.close()
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_seeds(config: FinetuneConfig, stop: StopSignal) -> Optional[dict]:
    """Every run that --seeds asks for; the seeds summary (None for a single run, or when
    SIGTERM stopped a run: it was saved, and the same command continues it)."""
    seeds, root = config.run.seed_list, Path(config.run.output_dir)
    if len(seeds) == 1:
        run_once(with_seed(config, seeds[0], root), stop)
        return None
    out = Outputs(root, dist.get_rank(), False)
    runs = []
    for seed in seeds:
        if stop.requested:
            out.print(f"SIGTERM: stopped before seed {seed}; run the same command again to continue")
            return None
        out.print(f"=== seed {seed} ({len(runs) + 1} of {len(seeds)}): {root / f'seed_{seed}'}")
        status, best = run_once(with_seed(config, seed, root / f"seed_{seed}"), stop)
        if status != "completed":
            return None
        runs.append({"seed": seed, "output_dir": str(root / f"seed_{seed}"), "best": best})
    summary = summarize(config.run.task, runs)
    out.write_json(SUMMARY_FILE, summary)
    out.print(format_table(summary))
    out.print(f"seeds summary: {root / SUMMARY_FILE}")
    return summary


def summarize(task: str, runs: list[dict]) -> dict:
    """Per metric of the runs' best evaluations: median, mean, min, max and the sample
    standard deviation (n - 1 in the denominator; 0 for one run)."""
    names = [name for name, value in runs[0]["best"].items()
             if name not in NOT_METRICS and isinstance(value, (int, float)) and not isinstance(value, bool)]
    metrics = {}
    for name in names:
        values = [float(run["best"][name]) for run in runs if name in run["best"]]
        metrics[name] = {"median": statistics.median(values), "mean": statistics.fmean(values),
                         "min": min(values), "max": max(values),
                         "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return {"status": "completed", "task": task, "seeds": [run["seed"] for run in runs], "runs": runs,
            "metrics": metrics}


def format_table(summary: dict) -> str:
    """Runs as rows and metrics as columns, then the statistics rows."""
    names = list(summary["metrics"])
    width = max([10, *(len(name) + 2 for name in names)])
    lines = ["seed".ljust(8) + "".join(name.rjust(width) for name in names)]
    for run in summary["runs"]:
        lines.append(str(run["seed"]).ljust(8) + "".join(
            f"{run['best'][name]:{width}.4f}" if name in run["best"] else "-".rjust(width) for name in names))
    for statistic in ("median", "min", "max", "std"):
        lines.append(statistic.ljust(8) + "".join(f"{summary['metrics'][name][statistic]:{width}.4f}"
                                                  for name in names))
    return "\n".join(lines)
