"""Benchmark of ``python -m data_prep shard`` against raw SentencePiece encoding.

    python -m bench.data_prep [--size_gb 1.0] [--procs 2] [--tokenizer tok/spm.model]

On an input of ``--size_gb`` of text (the shared corpus repeated, generated in a temporary
folder) it measures, in one run on the same text and machine:

* raw SentencePiece batch encoding (``encode(list, num_threads=N)``, only the encode calls
  timed) with 1 and ``--procs`` threads, in MB of text per second (SentencePiece's own
  threads scale poorly, so shard is also compared with N x the single-thread speed);
* ``shard`` end to end (start-up, reading, encoding, packing, writing, manifest) with 1 and
  ``--procs`` worker processes, the ratio of each to raw encoding on as many cores, and
  the speed-up from 1 to ``--procs`` processes;
* the peak RSS of any one process of ``shard``, on the full input and on a quarter of it,
  to show that memory does not grow with the input.

Targets: shard >= 0.8 x raw speed, >= 1.7 x from 1 to 2 processes, peak RSS < 1 GB and
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


def raw_encode_speed(folder: Path, model: Path, threads: int, batch_bytes: int = 1 << 22) -> tuple[float, float]:
    """MB per second and MB per CPU second of ``SentencePieceProcessor.encode(batch,
    num_threads=threads)`` alone."""
    processor = sentencepiece.SentencePieceProcessor(model_file=str(model))
    encoded_bytes, seconds, cpu_seconds = 0, 0.0, 0.0
    for path in sorted(folder.iterdir()):
        with open(path, "rb") as f:
            while block := f.read(batch_bytes):
                block += f.readline()
                documents = [d for d in block.decode("utf-8", errors="replace").split("\n\n") if d.strip()]
                started, cpu_started = time.perf_counter(), time.process_time()
                processor.encode(documents, num_threads=threads)
                seconds += time.perf_counter() - started
                cpu_seconds += time.process_time() - cpu_started
                encoded_bytes += len(block)
    return encoded_bytes / seconds / 1e6, encoded_bytes / cpu_seconds / 1e6


def shard_run(folder: Path, model: Path, output: Path, workers: int, input_bytes: int) -> dict:
    command = [sys.executable, "-c", _MEASURE_RSS, sys.executable, "-m", "data_prep", "shard",
               "--input", f"{folder}/*.txt", "--tokenizer", str(model), "--output", str(output),
               "--workers", str(workers), "--progress_interval", "30"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
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
        raw_per_cpu = {}
        raw = {}
        for threads in (1, args.procs):
            raw[threads], raw_per_cpu[threads] = raw_encode_speed(work / "full", model, threads)
        print(f"raw SentencePiece encode: 1 thread {raw[1]:.1f} MB/s, {args.procs} threads "
              f"{raw[args.procs]:.1f} MB/s; {raw_per_cpu[1]:.1f} MB per CPU second", flush=True)
        runs = {workers: shard_run(work / "full", model, work / "out", workers, full_bytes)
                for workers in (1, args.procs)}
        quarter = shard_run(work / "quarter", model, work / "out", 1, quarter_bytes)
        for workers, run in runs.items():
            print(f"shard, {workers} process(es): {run['mb_per_s']:.1f} MB/s ({run['seconds']:.0f} s), "
                  f"{run['mb_per_s'] / raw[workers]:.2f} x raw SentencePiece with {workers} thread(s), "
                  f"{run['mb_per_s'] / (workers * raw[1]):.2f} x {workers} x raw single-thread, "
                  f"{run['mb_per_cpu_s']:.1f} MB per CPU second ({run['mb_per_cpu_s'] / raw_per_cpu[1]:.2f} x raw), "
                  f"peak RSS per process {run['peak_rss_mb']:.0f} MB", flush=True)
        speedup = runs[args.procs]["mb_per_s"] / runs[1]["mb_per_s"]
        print(f"speed-up 1 -> {args.procs} processes: {speedup:.2f} x (load average after: "
              f"{os.getloadavg()[0]:.2f}; other load on the machine lowers it)")
        print(f"peak RSS, 1 process: {runs[1]['peak_rss_mb']:.0f} MB on {full_bytes / 1e9:.2f} GB, "
              f"{quarter['peak_rss_mb']:.0f} MB on {quarter_bytes / 1e9:.2f} GB")
        load_after = os.getloadavg()[0]
        results = {"input_bytes": full_bytes, "files": len(os.listdir(work / "full")), "tokenizer": str(model),
                   "raw_mb_per_s": raw, "raw_mb_per_cpu_s": raw_per_cpu, "shard": runs, "quarter_input": quarter,
                   "ratio_to_raw": {w: r["mb_per_s"] / raw[w] for w, r in runs.items()},
                   "ratio_to_ideal_raw": {w: r["mb_per_s"] / (w * raw[1]) for w, r in runs.items()},
                   "speedup": speedup, "load_average_before": load_before, "load_average_after": load_after}
        rows = [[f"raw `spm.encode(batch)`, 1 thread / {args.procs} threads",
                 f"{raw[1]:.1f} / {raw[args.procs]:.1f}", "", f"{raw_per_cpu[1]:.1f}", "", ""]]
        rows += [[f"`shard --workers {w}` (start-up, read, encode, pack, write, manifest)", f"{r['mb_per_s']:.1f}",
                  f"{r['mb_per_s'] / raw[w]:.2f}", f"{r['mb_per_cpu_s']:.1f}",
                  f"{r['mb_per_cpu_s'] / raw_per_cpu[1]:.2f}", f"{r['peak_rss_mb']:.0f} MB"] for w, r in runs.items()]
        write_result(args.json, benchmark="data_prep", title="Data preparation: shard throughput",
                     command=command_line("bench.data_prep", argv), results=results,
                     columns=["", "MB/s", "vs raw SentencePiece on as many cores", "MB per CPU second",
                              "vs raw (CPU seconds)", "peak RSS per process"], rows=rows,
                     notes=[f"{full_bytes / 1e9:.2f} GB of text (copies of the shared corpus in "
                            f"{results['files']} files), {'a given tokenizer' if args.tokenizer else f'a {args.vocab_size}-piece SentencePiece model trained by the script'}; "
                            f"load average {load_before:.2f} before, {load_after:.2f} after (other load lowers the figures; "
                            f"raw encoding and shard run one after the other, so a change of load between them moves "
                            f"the wall-time ratio, much less the CPU-seconds one).",
                            f"1 -> {args.procs} processes: **{speedup:.2f}x**. Peak RSS of one process: "
                            f"{quarter['peak_rss_mb']:.0f} MB on a quarter of the input, {runs[1]['peak_rss_mb']:.0f} MB "
                            f"on all of it."])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
