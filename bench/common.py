"""What every benchmark records beside its figures: the command, the machine, the date and
the commit. ``write_result`` writes one JSON file that ``bench/report.py`` renders."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def add_json_argument(parser: argparse.ArgumentParser, name: str) -> None:
    default = RESULTS / f"{name}.json"
    parser.add_argument("--json", default=str(default),
                        help=f"write the figures here (default {default.relative_to(REPO)}); '' for none")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import torch

    gpu = None
    if torch.cuda.is_available():
        gpu = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
    memory_gb = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory_gb = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "memory_gb": memory_gb, "gpu": gpu,
            "torch": torch.__version__, "python": platform.python_version(), "os": platform.platform()}


def git_commit() -> str:
    """HEAD, with ``-dirty`` when the measured code (tracked files) differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "deberta", "data_prep", "pretrain",
                      "finetune", "training", "bench")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if changed else "")


def command_line(module: str, argv: list[str] | None) -> str:
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def write_result(path: str, *, benchmark: str, title: str, command: str, results: dict,
                 columns: list[str], rows: list[list], notes: list[str] = ()) -> None:
    """One benchmark run: ``rows`` (already formatted) under ``columns`` is the table of the
    report; ``results`` keeps the raw figures."""
    if not path:
        return
    record = {"benchmark": benchmark, "title": title, "command": command,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "commit": git_commit(), "machine": machine(), "load_average": round(os.getloadavg()[0], 2),
              "table": {"columns": columns, "rows": rows}, "notes": list(notes), "results": results}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"figures written to {path}")
