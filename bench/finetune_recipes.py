"""The one-line finetuning command with its default recipe, over several seeds: each run's
dev figure, the median and the spread (as papers report GLUE results).

    python -m bench.finetune_recipes --model runs/main_job/model            # SST-2 and RTE, seeds 1 2 3
    python -m bench.finetune_recipes --tasks rte --seeds 1 2 --threads 1

Each run is ``python -m finetune --task T --data_dir D/<T's folder> --model M --output_dir
OUTPUT/T_seed<S> --seed S``: no other flag, so the settings are the recipe's
(finetune/recipes.py; for the main job's model, our small-model recipe). A finished run
folder is reused when its recorded settings are the ones that command resolves to today
(compared field by field: a run that differs is run again). Figures go to --json (default
bench/results/finetune_recipes.json); ``python -m bench.report`` renders them.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, add_json_argument, command_line, write_result
from finetune.config import parse_args

FOLDERS = {"sst-2": "SST-2", "rte": "RTE", "cola": "CoLA", "mrpc": "MRPC", "sts-b": "STS-B", "qnli": "QNLI"}
# Recorded settings that do not change what a run computes (or hold only with SiFT on).
NOT_COMPARED = {"output_dir", "log_interval", "progress_bar", "tensorboard", "save_best", "seeds"}
SIFT_ONLY = {"sift_lambda", "sift_step_size", "sift_init_noise"}
PATHS = {"model", "data_dir", "train", "dev", "test", "init_task_model"}  # relative to the repository root


def command(task: str, data_dir: Path, model: str, output: Path, seed: int) -> list[str]:
    return ["--task", task, "--data_dir", str(data_dir / FOLDERS[task]), "--model", model,
            "--output_dir", str(output), "--seed", str(seed)]


def differences(recorded: dict, expected: dict) -> list[str]:
    """Settings of a finished run that differ from what the command resolves to now. A field
    the record lacks (added to the code since) is not a difference."""
    found = []
    sift = expected["run"]["sift"]
    for section in ("run", "optimizer", "engine"):
        for name, value in expected[section].items():
            if name in NOT_COMPARED or (name in SIFT_ONLY and not sift) or name not in recorded.get(section, {}):
                continue
            before = recorded[section][name]
            if name in PATHS and before and value:  # the same file, however it was spelt
                before, value = str(Path(before).resolve()), str(Path(value).resolve())
            if before != value and not (section == "engine" and name == "micro_batch_size"):
                found.append(f"{section}.{name}: {before!r} != {value!r}")
    return found


def finished(folder: Path, expected: dict, resolved_batch: int) -> dict | None:
    """The run's best results if ``folder`` holds a completed run of these settings."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
        recorded = json.loads((folder / "finetune_config.json").read_text())
        ds = json.loads((folder / "ds_config.resolved.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("status") != "completed" or differences(recorded, expected) or \
            ds["train_batch_size"] != resolved_batch:
        return None
    return summary["best"]


def majority(task: str, data_dir: Path) -> float:
    """The dev accuracy of always predicting the most frequent dev label."""
    from finetune.data import read_table
    from finetune.tasks.classification import GLUE
    labels = collections.Counter(str(row.values[GLUE[task].label_column]) for row in
                                 read_table(data_dir / FOLDERS[task] / "dev.tsv"))
    return max(labels.values()) / sum(labels.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/main_job/model")
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "glue"),
                        help="GLUE folder with SST-2/, RTE/, ...")
    parser.add_argument("--tasks", nargs="+", default=["sst-2", "rte"], choices=sorted(FOLDERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--output_dir", default="runs/bench_recipes")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run (one run at a time)")
    add_json_argument(parser, "finetune_recipes")
    args = parser.parse_args(argv)
    output, data_dir = Path(args.output_dir), Path(args.data_dir)

    results: dict = {"model": args.model, "tasks": {}}
    rows = []
    for task in args.tasks:
        runs = {}
        for seed in args.seeds:
            folder = output / f"{task}_seed{seed}"
            flags = command(task, data_dir, args.model, folder, seed)
            config = parse_args(flags)
            expected = config.to_dict()
            batch = config.engine.global_batch_size or 32
            best = finished(folder, expected, batch)
            seconds = None
            if best is None:
                started = time.time()
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
                subprocess.run([sys.executable, "-m", "finetune", *flags], check=True, env=env, cwd=REPO)
                seconds = round(time.time() - started)
                best = finished(folder, expected, batch)
                if best is None:
                    raise SystemExit(f"error: {folder} did not finish with the expected settings")
            summary = json.loads((folder / "summary.json").read_text())
            runs[seed] = {"best": best, "wall_seconds": seconds or summary.get("wall_seconds"),
                          "reused": seconds is None}
        metric = next(k for k in runs[args.seeds[0]]["best"] if k not in ("step", "epoch", "loss"))
        values = [runs[seed]["best"][metric] for seed in args.seeds]
        baseline = majority(task, data_dir) if metric == "accuracy" else None
        results["tasks"][task] = {"recipe": expected["recipe"]["name"], "metric": metric, "runs": runs,
                                  "median": statistics.median(values), "min": min(values), "max": max(values),
                                  "majority_class": baseline}
        rows.append([task, f"`{expected['recipe']['name']}`", metric,
                     "" if baseline is None else f"{100 * baseline:.1f}",
                     ", ".join(f"{100 * v:.1f}" for v in values),
                     f"{100 * statistics.median(values):.1f}", f"{100 * (max(values) - min(values)):.1f}",
                     f"{round(statistics.median(r['wall_seconds'] for r in runs.values()))} s"])
    print(json.dumps(results, indent=1))
    write_result(args.json, benchmark="finetune_recipes", title="Finetuning with the default recipe",
                 command=command_line("bench.finetune_recipes", argv), results={**results, "settings": vars(args)},
                 columns=["task", "recipe", "dev metric", "majority class (%)", f"seeds {' '.join(map(str, args.seeds))} (%)",
                          "median (%)", "spread (points)", "time per run"],
                 rows=rows,
                 notes=[f"`python -m finetune --task T --data_dir {args.data_dir}/<T> --model {args.model} "
                        "--output_dir ... --seed S` and no other flag; the best dev evaluation of each run "
                        f"(one per epoch); {args.threads} thread(s) per run on a shared machine, so the times "
                        "vary with its load.",
                        "Runs found finished in the output folder were reused after their recorded settings "
                        "matched, field by field, what the command resolves to: "
                        + (", ".join(f"{task} seed {seed}" for task, entry in results["tasks"].items()
                                     for seed, run in entry["runs"].items() if run["reused"]) or "none") + "."])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
