"""Forward + backward of our DeBERTa against transformers' on the same input, in one run.

    python -m bench.model_step                       # CPU: v3-base shape, batch 1 x 512
    python -m bench.model_step --device cuda --dtype bf16 --batch 32 --backend sdpa

Two workloads, each timed for both implementations with the same config and input:
  backbone  the encoder alone, loss = mean of the last hidden state (same work on both sides)
  mlm       masked-LM training step with 15 % of the tokens as targets: transformers scores
            all L x 128100 outputs, ours only the targets (half the FLOPs of a base model)
Each implementation runs in its own subprocess so that peak memory (RSS on CPU, allocator
peak on GPU) is its own. Prints seconds/step, tokens/s, peak memory and our/their ratios, and writes them to --json
(default bench/results/model_step.json).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import torch

from bench.common import REPO, add_json_argument, command_line, write_result


def build(impl: str, workload: str, args):
    from deberta import DebertaConfig, build_model
    from deberta.checkpoint import hf_config

    config = DebertaConfig.from_preset(args.preset, emd_layers=0, attention_backend=args.backend)
    head = "masked_lm" if workload == "mlm" else "backbone"
    if impl == "ours":
        return build_model(config, head)
    import transformers

    hf = transformers.DebertaV2Config(**hf_config(config, head))
    return (transformers.DebertaV2ForMaskedLM if head == "masked_lm" else transformers.DebertaV2Model)(hf)


def step_fn(model, workload: str, batch, labels):
    def step():
        if workload == "mlm":
            loss = model(input_ids=batch, labels=labels).loss
        else:
            loss = model(input_ids=batch).last_hidden_state.float().mean()
        loss.backward()
    return step


class RssPeak:
    """Peak resident memory above the level at start, sampled every 5 ms (CPU runs): the
    allocator's own high-water mark would include the model construction."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self.current()
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def current(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def sample(self):
        while self.running:
            self.peak = max(self.peak, self.current())
            time.sleep(0.005)

    def stop_mb(self) -> float:
        self.running = False
        self.thread.join()
        return (max(self.peak, self.current()) - self.start) / 2**20


def worker(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build(args.impl, args.workload, args).to(device).train()
    vocab = model.config.vocab_size
    batch = torch.randint(5, vocab, (args.batch, args.seq), device=device)
    labels = batch.masked_fill(torch.rand(batch.shape, device=device) > 0.15, -100)
    step = step_fn(model, args.workload, batch, labels)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def run(steps):
        for _ in range(steps):
            with autocast:
                step()
            model.zero_grad(set_to_none=True)

    run(args.warmup)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        rss = RssPeak()
    start, cpu_start = time.perf_counter(), time.process_time()
    run(args.steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    cpu_seconds = (time.process_time() - cpu_start) / args.steps
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = rss.stop_mb()
    return {"seconds_per_step": seconds, "cpu_seconds_per_step": cpu_seconds,
            "tokens_per_s": args.batch * args.seq / seconds, "peak_mb": peak_mb}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="deberta-v3-base")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--backend", default="eager", help="our attention backend (eager, sdpa, ...)")
    parser.add_argument("--workloads", default="backbone,mlm")
    parser.add_argument("--impl", choices=("ours", "hf"), help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    add_json_argument(parser, "model_step")
    args = parser.parse_args(argv)
    if args.impl:  # a worker subprocess
        print(json.dumps(worker(args)))
        return
    torch_threads = torch.get_num_threads()
    setting = (f"{args.preset}, batch {args.batch} x seq {args.seq}, {args.dtype}, device {args.device}, "
               f"our backend {args.backend}, {torch_threads} torch threads")
    print(f"# {setting}, torch {torch.__version__}")
    print(f"{'workload':10} {'impl':13} {'s/step':>8} {'tokens/s':>10} {'peak MB':>9}")
    figures, rows = {}, []
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
    for workload in args.workloads.split(","):
        results = {}
        for impl in ("hf", "ours"):
            command = [sys.executable, "-m", "bench.model_step", "--impl", impl, "--workload", workload,
                       *forwarded, "--json", ""]
            done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
            if done.returncode:
                raise SystemExit(f"{impl} {workload} failed:\n{done.stderr}")
            results[impl] = json.loads(done.stdout.strip().splitlines()[-1])
            r = results[impl]
            name = "transformers" if impl == "hf" else "ours"
            print(f"{workload:10} {name:13} {r['seconds_per_step']:8.3f} {r['tokens_per_s']:10.0f} "
                  f"{r['peak_mb']:9.0f}")
        speedup = results["hf"]["seconds_per_step"] / results["ours"]["seconds_per_step"]
        memory = results["ours"]["peak_mb"] / max(results["hf"]["peak_mb"], 1e-9)
        print(f"{workload:10} {'ratio':13} speed ours/transformers = {speedup:.2f}x, "
              f"peak memory ours/transformers = {memory:.2f}")
        cpu_speedup = results["hf"]["cpu_seconds_per_step"] / results["ours"]["cpu_seconds_per_step"]
        print(f"{workload:10} {'ratio':13} CPU time ours/transformers = {cpu_speedup:.2f}x")
        figures[workload] = {"transformers": results["hf"], "ours": results["ours"], "speedup": speedup,
                             "cpu_time_speedup": cpu_speedup, "memory_ratio": memory}
        rows.append([WORKLOADS.get(workload, workload), f"{results['hf']['seconds_per_step']:.3f}",
                     f"{results['ours']['seconds_per_step']:.3f}", f"**{speedup:.2f}x**", f"{cpu_speedup:.2f}x",
                     f"{results['hf']['peak_mb']:.0f} / {results['ours']['peak_mb']:.0f}"])
    peak = "allocator peak" if args.device.startswith("cuda") else "growth of resident memory"
    write_result(args.json, benchmark="model_step", title=f"Model step: forward + backward, ours against transformers",
                 command=command_line("bench.model_step", argv),
                 results={"setting": setting, **figures},
                 columns=["workload", "transformers s/step", "ours s/step", "speed, ours / transformers",
                          "CPU time, transformers / ours", "peak MB, transformers / ours"], rows=rows,
                 notes=[f"{setting}; transformers {_transformers_version()} DebertaV2Model / DebertaV2ForMaskedLM "
                        f"with the same config and input, each implementation in its own process; the mean of "
                        f"{args.steps} steps after {args.warmup} warm-up; peak memory is the {peak} during the timed steps. "
                        f"The two run one after the other, so other load on the machine can favour either; "
                        f"the ratio of process CPU time depends less on it."])


WORKLOADS = {"backbone": "backbone (loss = mean of last hidden state)",
             "mlm": "MLM training step, 15 % targets"}


def _transformers_version() -> str:
    import transformers
    return transformers.__version__

if __name__ == "__main__":
    main()
