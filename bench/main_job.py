"""The main job's figures: `bash pretrain/run_example.sh` end to end, its validation
metrics at the first and last evaluation and its wall time, recorded for the docs.

    python -m bench.main_job [--work runs/main_job] [--max_steps 300]

The run itself is the README's main job (data prep, tokenizer, shards, tiny v3 RTD
pretraining on 2 CPU ranks or one rank per GPU, conversion); this script only starts it in
``--work`` and reads ``WORK/run/eval.jsonl`` afterwards. Training is deterministic on CPU,
so the validation figures of a given corpus and commit repeat exactly; a changed figure is
a changed behaviour. Figures go to --json (default bench/results/main_job.json).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from bench.common import REPO, add_json_argument, command_line, write_result

FIGURES = ("loss", "mlm_loss", "mlm_acc", "rtd_loss", "rtd_acc", "rtd_auc")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="runs/main_job", help="the job's folder (WORK of run_example.sh)")
    parser.add_argument("--max_steps", type=int, default=300)
    add_json_argument(parser, "main_job")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    if (work / "run").exists():
        parser.error(f"{work / 'run'} exists: a resumed run would not show the job's own figures; "
                     f"choose another --work or remove it")
    started = time.time()
    subprocess.run(["bash", str(REPO / "pretrain" / "run_example.sh")], cwd=REPO, check=True,
                   env={**os.environ, "WORK": str(work), "MAX_STEPS": str(args.max_steps)})
    seconds = round(time.time() - started)
    evals = [json.loads(line) for line in (work / "run" / "eval.jsonl").read_text().splitlines() if line.strip()]
    first, last = evals[0], evals[-1]
    settings = json.loads((work / "run" / "summary.json").read_text())
    shared = REPO.parent / "shared" / "data" / "corpus"
    corpus = f"the shared corpus ({', '.join(sorted(p.name for p in shared.iterdir()))})" if shared.is_dir() else \
        "the Python documentation and package descriptions (pretrain/example_corpus.py)"
    rows = [[name, f"{first[name]:.4f}", f"{last[name]:.4f}"] for name in FIGURES if name in last]
    write_result(args.json, benchmark="main_job", title="The main job: tiny DeBERTa-v3 RTD pretraining",
                 command=command_line("bench.main_job", argv),
                 results={"first_eval": first, "last_eval": last, "wall_seconds": seconds, "summary": settings},
                 columns=["validation", f"step {first['step']}", f"step {last['step']}"], rows=rows,
                 notes=[f"`bash pretrain/run_example.sh` with MAX_STEPS={args.max_steps}: 4 layers, hidden 128 "
                        f"(generator 2 layers), RTD + GDES with the default recipe settings, 128-token "
                        f"sequences, 2 CPU ranks (one per GPU where there are GPUs); corpus: {corpus}. "
                        f"Whole job (data prep, pretraining, conversion) {seconds} s."])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
