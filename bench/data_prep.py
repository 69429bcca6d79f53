"""Benchmark of ``python -m data_prep shard`` against raw SentencePiece encoding.

    python -m bench.data_prep [--size_gb 1.0] [--procs 2] [--tokenizer tok/spm.model]

On an input of ``--size_gb`` of text (the shared corpus repeated, generated in a temporary
folder) it measures, in one run on the same text and machine:

* raw SentencePiece batch encoding, only the encode calls timed, in MB of text per second
  and per CPU second: ``encode(list, num_threads=N)`` with 1 and ``--procs`` threads, and
  ``encode(list, out_type="numpy")`` (an array per document, what shard asks for) in 1 and
  in ``--procs`` processes at once, each on its share of the files (SentencePiece's own
  threads scale poorly);
* ``shard`` end to end (start-up, reading, encoding, packing, writing, manifest) with 1 and
  ``--procs`` worker processes, the ratio of each to the fastest raw encoding on as many
  cores, in wall time and in CPU seconds, and the speed-up from 1 to ``--procs``
  processes. Its modules are compiled once beforehand
  (``PYTHONPYCACHEPREFIX`` in the work folder), as an installed package's are, even where
  ``PYTHONDONTWRITEBYTECODE`` is set;
* the peak RSS of any one process of ``shard``, on the full input and on a quarter of it,
  to show that memory does not grow with the input.

Everything is measured ``--repeats`` times (3), raw encoding and shard in turn in each round,
and each figure is the best of its rounds: on a shared machine other load slows every run
down, CPU seconds included (cores, caches and clock are shared), and one round's raw and
shard can meet very different load. The notes keep every round's CPU-second ratios.

Targets: shard >= 0.9 x raw speed (issue 14), >= 1.7 x from 1 to 2 processes, peak RSS < 1 GB and
independent of the input size. Without ``--tokenizer`` a SentencePiece model of
``--vocab_size`` (32K) pieces is first trained on the corpus with ``python -m data_prep tokenizer``.
The figures go to --json (default bench/results/data_prep.json).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import sentencepiece

from bench.common import add_json_argument, command_line, write_result

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "corpus"
FILES_PER_GB = 16          # the input is split into files, as corpora usually are

# Runs a command and prints the largest peak RSS of it and of all its descendants (the
# kernel keeps the maximum over every waited-for descendant in RUSAGE_CHILDREN).
# Also prints their CPU seconds, which, unlike wall time, do not depend on what else the
# machine runs.
_MEASURE_RSS = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
                "usage = resource.getrusage(resource.RUSAGE_CHILDREN); "
                "print(usage.ru_maxrss, usage.ru_utime + usage.ru_stime); sys.exit(code)")


def make_input(folder: Path, size_bytes: int) -> int:
    """The corpus repeated into ``folder`` until it holds ``size_bytes``; returns the bytes."""
    corpus = b"".join((CORPUS / name).read_bytes().rstrip(b"\n") + b"\n\n" for name in sorted(os.listdir(CORPUS)))
    files = max(1, round(FILES_PER_GB * size_bytes / 2**30))
    copies_per_file = -(-size_bytes // (len(corpus) * files))
    folder.mkdir(parents=True)
    for number in range(files):
        with open(folder / f"part-{number:03d}.txt", "wb") as f:
            for _ in range(copies_per_file):
                f.write(corpus)
    return sum(p.stat().st_size for p in folder.iterdir())


def _encode_files(paths: list[Path], model: Path, threads: int, out_type, batch_bytes: int = 1 << 22
                  ) -> tuple[int, float, float]:
    """Bytes encoded, and the seconds and CPU seconds of the ``encode`` calls alone."""
    processor = sentencepiece.SentencePieceProcessor(model_file=str(model))
    encoded_bytes, seconds, cpu_seconds = 0, 0.0, 0.0
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(batch_bytes):
                block += f.readline()
                documents = [d for d in block.decode("utf-8", errors="replace").split("\n\n") if d.strip()]
                started, cpu_started = time.perf_counter(), time.process_time()
                processor.encode(documents, num_threads=threads, out_type=out_type)
                seconds += time.perf_counter() - started
                cpu_seconds += time.process_time() - cpu_started
                encoded_bytes += len(block)
    return encoded_bytes, seconds, cpu_seconds


def raw_encode_speed(folder: Path, model: Path, threads: int = 1, out_type=int, processes: int = 1
                     ) -> tuple[float, float]:
    """MB per second and MB per CPU second of ``SentencePieceProcessor.encode(batch,
    num_threads=threads, out_type=out_type)`` alone; with ``processes`` > 1, that many
    processes at once, each on its share of the files (as ``shard --workers`` runs)."""
    paths = sorted(folder.iterdir())
    if processes == 1:
        encoded_bytes, seconds, cpu_seconds = _encode_files(paths, model, threads, out_type)
        return encoded_bytes / seconds / 1e6, encoded_bytes / cpu_seconds / 1e6
    with ProcessPoolExecutor(processes) as pool:
        shares = list(pool.map(_encode_files, [paths[i::processes] for i in range(processes)],
                               [model] * processes, [threads] * processes, [out_type] * processes))
    encoded_bytes = sum(share[0] for share in shares)
    return (encoded_bytes / max(share[1] for share in shares) / 1e6,
            encoded_bytes / sum(share[2] for share in shares) / 1e6)


def shard_run(folder: Path, model: Path, output: Path, workers: int, input_bytes: int, pycache: Path) -> dict:
    command = [sys.executable, "-c", _MEASURE_RSS, sys.executable, "-m", "data_prep", "shard",
               "--input", f"{folder}/*.txt", "--tokenizer", str(model), "--output", str(output),
               "--workers", str(workers), "--progress_interval", "30"]
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    environment["PYTHONPYCACHEPREFIX"] = str(pycache)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=environment)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"shard failed:\n{result.stderr}")
    peak_rss_kb, cpu_seconds = result.stdout.strip().splitlines()[-1].split()
    shutil.rmtree(output)
    return {"seconds": seconds, "mb_per_s": input_bytes / seconds / 1e6, "peak_rss_mb": int(peak_rss_kb) / 1024,
            "mb_per_cpu_s": input_bytes / float(cpu_seconds) / 1e6}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size_gb", type=float, default=1.0)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--tokenizer", help="SentencePiece model (default: train one of --vocab_size on the corpus)")
    parser.add_argument("--vocab_size", type=int, default=32000)
    parser.add_argument("--workdir", help="where to generate the input (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every measurement; the best of each is kept")
    add_json_argument(parser, "data_prep")
    args = parser.parse_args(argv)
    if not CORPUS.is_dir():
        sys.exit(f"the shared corpus is absent ({CORPUS})")

    work = Path(tempfile.mkdtemp(prefix="bench_data_prep_", dir=args.workdir))
    try:
        model = Path(args.tokenizer) if args.tokenizer else None
        if model is None:
            subprocess.run([sys.executable, "-m", "data_prep", "tokenizer", "--input", f"{CORPUS}/*.txt",
                            "--vocab_size", str(args.vocab_size), "--output", str(work / "tok")], cwd=REPO, check=True)
            model = work / "tok" / "spm.model"
        full_bytes = make_input(work / "full", int(args.size_gb * 2**30))
        quarter_bytes = make_input(work / "quarter", int(args.size_gb * 2**30 / 4))
        print(f"input: {full_bytes / 1e9:.2f} GB in {len(os.listdir(work / 'full'))} files; "
              f"tokenizer {model}", flush=True)

        load_before = os.getloadavg()[0]
        print(f"load average before: {load_before:.2f}", flush=True)
        # The quarter first: its run also compiles shard's modules into the cache the others read.
        quarter = shard_run(work / "quarter", model, work / "out", 1, quarter_bytes, work / "pycache")
        rounds = []
        counts = (1, args.procs)
        for number in range(1, args.repeats + 1):
            measured = {"raw_threads": {t: raw_encode_speed(work / "full", model, threads=t) for t in counts},
                        "raw_numpy": {n: raw_encode_speed(work / "full", model, out_type="numpy", processes=n)
                                      for n in counts},
                        "shard": {w: shard_run(work / "full", model, work / "out", w, full_bytes, work / "pycache")
                                  for w in counts}}
            rounds.append(measured)
            print(f"round {number}: MB per CPU second: raw encode 1 thread {measured['raw_threads'][1][1]:.1f}, "
                  f"out_type=numpy on 1 / {args.procs} processes {measured['raw_numpy'][1][1]:.1f} / "
                  f"{measured['raw_numpy'][args.procs][1]:.1f}; shard 1 / {args.procs} processes "
                  f"{measured['shard'][1]['mb_per_cpu_s']:.1f} / {measured['shard'][args.procs]['mb_per_cpu_s']:.1f}; "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)

        # Each figure is the best of the rounds: other load only ever slows a run down.
        def best(figures) -> tuple[float, float]:
            figures = list(figures)
            return max(f[0] for f in figures), max(f[1] for f in figures)

        raw_threads = {t: best(r["raw_threads"][t] for r in rounds) for t in counts}
        raw_numpy = {n: best(r["raw_numpy"][n] for r in rounds) for n in counts}
        runs = {w: {"seconds": min(r["shard"][w]["seconds"] for r in rounds),
                    "mb_per_s": max(r["shard"][w]["mb_per_s"] for r in rounds),
                    "mb_per_cpu_s": max(r["shard"][w]["mb_per_cpu_s"] for r in rounds),
                    "peak_rss_mb": max(r["shard"][w]["peak_rss_mb"] for r in rounds)} for w in counts}
        # The reference of shard on N processes: the fastest raw encoding on N cores.
        reference = {1: tuple(max(a, b) for a, b in zip(raw_threads[1], raw_numpy[1]))}
        reference[args.procs] = tuple(max(a, b) for a, b in zip(raw_threads[args.procs], raw_numpy[args.procs]))
        ratio_wall = {w: runs[w]["mb_per_s"] / reference[w][0] for w in counts}
        ratio_cpu = {w: runs[w]["mb_per_cpu_s"] / reference[w][1] for w in counts}
        # Against SentencePiece's default encode (Python lists, its own threads): the reference
        # of the 0.80, before the arrays that shard now takes were used.
        ratio_cpu_default = {w: runs[w]["mb_per_cpu_s"] / raw_threads[w][1] for w in counts}
        print(f"raw SentencePiece encode, MB/s (MB per CPU second): 1 thread {raw_threads[1][0]:.1f} "
              f"({raw_threads[1][1]:.1f}), {args.procs} threads {raw_threads[args.procs][0]:.1f} "
              f"({raw_threads[args.procs][1]:.1f}); out_type=numpy, 1 process {raw_numpy[1][0]:.1f} "
              f"({raw_numpy[1][1]:.1f}), {args.procs} processes {raw_numpy[args.procs][0]:.1f} "
              f"({raw_numpy[args.procs][1]:.1f})", flush=True)
        for workers, run in runs.items():
            print(f"shard, {workers} process(es): {run['mb_per_s']:.1f} MB/s ({run['seconds']:.0f} s), "
                  f"{ratio_wall[workers]:.2f} x the fastest raw encoding on {workers} core(s); "
                  f"{run['mb_per_cpu_s']:.1f} MB per CPU second, {ratio_cpu[workers]:.2f} x raw "
                  f"({ratio_cpu_default[workers]:.2f} x SentencePiece's default encode); "
                  f"peak RSS per process {run['peak_rss_mb']:.0f} MB", flush=True)
        speedup = runs[args.procs]["mb_per_s"] / runs[1]["mb_per_s"]
        print(f"speed-up 1 -> {args.procs} processes: {speedup:.2f} x (load average after: "
              f"{os.getloadavg()[0]:.2f}; other load on the machine lowers it)")
        print(f"peak RSS, 1 process: {runs[1]['peak_rss_mb']:.0f} MB on {full_bytes / 1e9:.2f} GB, "
              f"{quarter['peak_rss_mb']:.0f} MB on {quarter_bytes / 1e9:.2f} GB")
        load_after = os.getloadavg()[0]
        results = {"input_bytes": full_bytes, "files": len(os.listdir(work / "full")), "tokenizer": str(model),
                   "raw_threads_mb_per_s_and_cpu_s": raw_threads, "raw_numpy_mb_per_s_and_cpu_s": raw_numpy,
                   "reference_mb_per_s_and_cpu_s": reference, "shard": runs, "quarter_input": quarter,
                   "ratio_to_raw": ratio_wall, "ratio_to_raw_cpu_s": ratio_cpu,
                   "ratio_to_default_encode_cpu_s": ratio_cpu_default,
                   "speedup": speedup, "load_average_before": load_before, "load_average_after": load_after,
                   "repeats": args.repeats, "rounds": rounds}
        rows = [[f"raw `spm.encode(batch, num_threads=N)`, N = 1 / {args.procs}",
                 f"{raw_threads[1][0]:.1f} / {raw_threads[args.procs][0]:.1f}", "",
                 f"{raw_threads[1][1]:.1f} / {raw_threads[args.procs][1]:.1f}", "", "", ""],
                [f"raw `spm.encode(batch, out_type=\"numpy\")` in 1 / {args.procs} processes",
                 f"{raw_numpy[1][0]:.1f} / {raw_numpy[args.procs][0]:.1f}", "",
                 f"{raw_numpy[1][1]:.1f} / {raw_numpy[args.procs][1]:.1f}", "", "", ""]]
        rows += [[f"`shard --workers {w}` (start-up, read, encode, pack, write, manifest)", f"{r['mb_per_s']:.1f}",
                  f"{ratio_wall[w]:.2f}", f"{r['mb_per_cpu_s']:.1f}", f"**{ratio_cpu[w]:.2f}**",
                  f"**{ratio_cpu_default[w]:.2f}**", f"{r['peak_rss_mb']:.0f} MB"] for w, r in runs.items()]
        per_round = "; ".join(f"{r['shard'][1]['mb_per_cpu_s'] / max(r['raw_threads'][1][1], r['raw_numpy'][1][1]):.2f}, "
                              f"{r['shard'][args.procs]['mb_per_cpu_s'] / max(r['raw_threads'][args.procs][1], r['raw_numpy'][args.procs][1]):.2f}"
                              for r in rounds)
        write_result(args.json, benchmark="data_prep", title="Data preparation: shard throughput",
                     command=command_line("bench.data_prep", argv), results=results,
                     columns=["", "MB/s", "vs the fastest raw encoding on as many cores", "MB per CPU second",
                              "vs the fastest raw (CPU seconds)", "vs the default encode, lists (CPU seconds)",
                              "peak RSS per process"], rows=rows,
                     notes=[f"{full_bytes / 1e9:.2f} GB of text (copies of the shared corpus in "
                            f"{results['files']} files), {'a given tokenizer' if args.tokenizer else f'a {args.vocab_size}-piece SentencePiece model trained by the script'}; "
                            f"load average {load_before:.2f} before, {load_after:.2f} after (other load lowers the figures, "
                            f"CPU seconds too: cores and caches are shared).",
                            f"{args.repeats} rounds, each raw encoding then shard, each figure the best of its rounds. "
                            f"Shard on N processes is compared with the fastest raw encoding on N cores (SentencePiece's "
                            f"own N threads, or N processes with out_type=numpy). CPU-second ratios of each round, "
                            f"1 and {args.procs} processes: {per_round}.",
                            f"1 -> {args.procs} processes: **{speedup:.2f}x**. Peak RSS of one process: "
                            f"{quarter['peak_rss_mb']:.0f} MB on a quarter of the input, {runs[1]['peak_rss_mb']:.0f} MB "
                            f"on all of it."])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
