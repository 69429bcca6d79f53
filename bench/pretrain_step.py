"""Training-step throughput: our MLM pretraining step against transformers' DeBERTa-v2 MLM.

    python -m bench.pretrain_step                                   # CPU default: v3-base, seq 128, batch 4
    python -m bench.pretrain_step --seq_len 512 --batch_size 32 --precision bf16    # v3-base on a GPU

Both models have the same shape and run the same step in one process, alternately (the
median step of each is reported): forward with
15 % of positions as targets, backward, AdamW. Ours computes the 128K-way output only at
the targets and includes the enhanced mask decoder (2 extra passes through the last
layer, as pretraining runs it); transformers computes the output at every position and
has no decoder. Printed: tokens/s, model TFLOP/s (each model's own FLOPs,
pretrain/metrics.py), peak memory on GPU, and the ratio ours / transformers; the figures go
to --json (default bench/results/pretrain_step.json).

    python -m bench.pretrain_step --compare compile --set_model num_hidden_layers=2 \
        --json bench/results/pretrain_step_compile.json

compares instead four versions of our step, alternating: eager or with compiled encoder
layers (``--compile_backend``, inductor by default), each with the MLM output at exactly
the targets (a data-dependent shape the host counts) or at a fixed ``max_preds_per_seq``
per sequence (``round(0.15 x seq_len)``). Each step gets another mask, with 0-3 targets
fewer than that in each row (as whole-word and n-gram spans leave), so the exact count
changes from step to step; the first step of each version (compilation) is not timed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.common import add_json_argument, command_line, write_result
from deberta import DebertaConfig, DebertaForMaskedLM
from deberta.checkpoint import hf_config
from pretrain.config import model_config, parse_overrides
from pretrain.metrics import forward_flops_per_token


def make_batch(batch: int, seq_len: int, vocab: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq_len), generator=g)
    labels = torch.full_like(ids, -100)
    targets = torch.rand(batch, seq_len, generator=g) < 0.15
    labels[targets] = ids[targets]
    return ids.to(device), torch.ones_like(ids).to(device), labels.to(device)


class Stepper:
    """One model's training step (forward, backward, AdamW), timed step by step."""

    def __init__(self, model, loss_fn, device):
        self.model, self.loss_fn, self.device = model, loss_fn, device
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []  # this process's CPU time: what other load on the machine moves least
        self.peak_gib = float("nan")

    def step(self, timed: bool) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start, cpu_start = time.perf_counter(), time.process_time()
        self.loss_fn().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_gib = torch.cuda.max_memory_allocated() / 2 ** 30
        if timed:
            self.seconds.append(time.perf_counter() - start)
            self.cpu_seconds.append(time.process_time() - cpu_start)


def variable_target_batches(count: int, batch: int, seq_len: int, vocab: int, device) -> list:
    """Batches whose rows have between budget - 3 and budget targets, budget = round(0.15 x seq_len)."""
    g = torch.Generator().manual_seed(1)
    budget = max(1, round(0.15 * seq_len))
    batches = []
    for _ in range(count):
        ids = torch.randint(5, vocab, (batch, seq_len), generator=g)
        labels = torch.full_like(ids, -100)
        for row in range(batch):
            chosen = torch.randperm(seq_len - 2, generator=g)[:budget - int(torch.randint(0, 4, (1,), generator=g))] + 1
            labels[row, chosen] = ids[row, chosen]
        batches.append((ids.to(device), torch.ones_like(ids).to(device), labels.to(device)))
    return batches


def compare_compile(args, config, device, autocast, argv) -> dict:
    """Eager vs compiled layers, exact vs fixed MLM outputs, alternating step by step."""
    from training.compile import compile_encoder_layers

    fixed = max(1, round(0.15 * args.seq_len))
    batches = variable_target_batches(4, args.batch_size, args.seq_len, config.vocab_size, device)
    tokens = args.batch_size * args.seq_len
    torch.manual_seed(0)
    reference = DebertaForMaskedLM(config).to(device).train()
    steppers, counters = {}, {}
    for compiled in (False, True):
        for max_predictions in (None, fixed):
            model = DebertaForMaskedLM(config).to(device).train()
            model.load_state_dict(reference.state_dict())
            if compiled:
                compile_encoder_layers(model, backend=args.compile_backend)
            outputs = "exact targets" if max_predictions is None else f"{fixed} outputs per sequence"
            name = f"{'compiled' if compiled else 'eager'}, {outputs}"
            counters[name] = iter(range(10 ** 9))

            def loss_fn(model=model, max_predictions=max_predictions, counter=counters[name]):
                ids, mask, labels = batches[next(counter) % len(batches)]
                with autocast:
                    return model(ids, mask, labels=labels, max_predictions=max_predictions).loss
            steppers[name] = Stepper(model, loss_fn, device)
    for i in range(args.warmup + args.steps):
        for stepper in steppers.values():
            stepper.step(timed=i >= args.warmup)
    base = base_cpu = None
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda"
               else f"cpu ({torch.get_num_threads()} threads)", "model": args.model_config, "set_model": args.set_model, "batch_size": args.batch_size,
               "seq_len": args.seq_len, "precision": args.precision, "compile_backend": args.compile_backend,
               "fixed_outputs": fixed, "systems": {}}
    rows = []
    for name, stepper in steppers.items():
        seconds, cpu = statistics.median(stepper.seconds), statistics.median(stepper.cpu_seconds)
        base, base_cpu = base or seconds, base_cpu or cpu
        results["systems"][name] = {"tokens_per_s": tokens / seconds, "seconds_per_step": seconds,
                                    "cpu_seconds_per_step": cpu, "ratio_to_eager_exact": base / seconds,
                                    "cpu_ratio_to_eager_exact": base_cpu / cpu}
        print(f"{name:>40}: {tokens / seconds:,.0f} tokens/s | {seconds:.3f} s/step ({base / seconds:.2f}x) | "
              f"{cpu:.3f} CPU s/step ({base_cpu / cpu:.2f}x eager exact)")
        rows.append([name, f"{tokens / seconds:,.0f}", f"{seconds:.3f}", f"{base / seconds:.2f}x", f"{cpu:.3f}",
                     f"**{base_cpu / cpu:.2f}x**"])
    write_result(args.json, benchmark="pretrain_step", title="Pretraining step: compiled layers and a fixed MLM output",
                 command=command_line("bench.pretrain_step", argv), results=results,
                 columns=["our step", "tokens/s", "s/step", "vs eager exact", "CPU s/step", "vs eager exact (CPU)"],
                 rows=rows,
                 notes=[f"{args.model_config} ({args.set_model or 'no overrides'}), batch {args.batch_size} x seq "
                        f"{args.seq_len}, {args.precision}, {results['device']}, attention backend "
                        f"{args.attention_backend}, compile backend {args.compile_backend}; rows have "
                        f"{fixed - 3}-{fixed} "
                        f"targets, a new mask every step (4 masks in turn); the four versions alternate step by step, "
                        f"median of {args.steps} steps after {args.warmup} warm-up (compilation included there)."])
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_config", default="deberta-v3-base")
    parser.add_argument("--set_model", default="", help='DebertaConfig overrides, e.g. "num_hidden_layers=2"')
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: autocast (GPU or CPU), fp32 master weights")
    parser.add_argument("--attention_backend", default="sdpa", help="ours: eager or sdpa")
    parser.add_argument("--compare", choices=("transformers", "compile"), default="transformers",
                        help="transformers: ours against transformers; compile: our step eager and compiled, with "
                             "the MLM output at exactly the targets or at a fixed number per sequence")
    parser.add_argument("--compile_backend", default="inductor", help="--compare compile: the torch.compile backend")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    add_json_argument(parser, "pretrain_step")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides = {**parse_overrides(args.set_model), "attention_backend": args.attention_backend,
                 "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    config = model_config(args.model_config, overrides)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    if args.compare == "compile":
        return compare_compile(args, config, device, autocast, argv)
    ids, mask, labels = make_batch(args.batch_size, args.seq_len, config.vocab_size, device)
    tokens = args.batch_size * args.seq_len

    import transformers
    torch.manual_seed(0)
    ours = DebertaForMaskedLM(config).to(device).train()
    hf_values = hf_config(config, "masked_lm")
    theirs = transformers.DebertaV2ForMaskedLM(transformers.DebertaV2Config(**hf_values)).to(device).train()

    def our_step():
        with autocast:
            return ours(ids, mask, labels=labels).loss

    def their_step():
        with autocast:
            return theirs(input_ids=ids, attention_mask=mask, labels=labels).loss

    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
               "model": args.model_config, "batch_size": args.batch_size, "seq_len": args.seq_len,
               "precision": args.precision, "attention_backend": args.attention_backend}
    flops = {"ours": 3 * forward_flops_per_token(config, args.seq_len, 0.15, mlm_head=True),
             "transformers": 3 * forward_flops_per_token(DebertaConfig.from_dict({**config.to_dict(), "emd_layers": 0}),
                                                         args.seq_len, 1.0, mlm_head=True)}
    # Steps alternate between the two systems, so that a change in the machine's load
    # (other processes, clocks) affects both alike; each reports its median step.
    steppers = {"ours": Stepper(ours, our_step, device), "transformers": Stepper(theirs, their_step, device)}
    for i in range(args.warmup + args.steps):
        for stepper in steppers.values():
            stepper.step(timed=i >= args.warmup)
    for name, stepper in steppers.items():
        seconds = statistics.median(stepper.seconds)
        results[name] = {"tokens_per_s": tokens / seconds, "model_tflops": tokens / seconds * flops[name] / 1e12,
                         "seconds_per_step": seconds, "peak_gib": stepper.peak_gib}
    results["ratio"] = results["ours"]["tokens_per_s"] / results["transformers"]["tokens_per_s"]
    for name in ("ours", "transformers"):
        r = results[name]
        peak = f" | peak {r['peak_gib']:.1f} GiB" if r["peak_gib"] == r["peak_gib"] else ""  # NaN off GPU
        print(f"{name:>12}: {r['tokens_per_s']:,.0f} tokens/s | {r['model_tflops']:.3f} model TFLOP/s | "
              f"{r['seconds_per_step']:.3f} s/step{peak}")
    print(f"ratio ours / transformers: {results['ratio']:.2f}x  ({results['device']}, {args.model_config}, "
          f"batch {args.batch_size} x seq {args.seq_len}, {args.precision})")
    rows = [[name, f"{results[name]['tokens_per_s']:,.0f}", f"{results[name]['model_tflops']:.3f}",
             f"{results[name]['seconds_per_step']:.3f}"]
            + ([f"{results[name]['peak_gib']:.1f}"] if device.type == "cuda" else [])
            for name in ("ours", "transformers")]
    rows.append(["ratio ours / transformers", f"**{results['ratio']:.2f}x**", "", ""]
                + ([""] if device.type == "cuda" else []))
    write_result(args.json, benchmark="pretrain_step", title="Pretraining step: forward, backward and AdamW",
                 command=command_line("bench.pretrain_step", argv), results=results,
                 columns=["system", "tokens/s", "model TFLOP/s", "s/step"] + (["peak GiB"] if device.type == "cuda" else []),
                 rows=rows,
                 notes=[f"{args.model_config} ({args.set_model or 'no overrides'}), batch {args.batch_size} x seq "
                        f"{args.seq_len}, {args.precision}, {results['device']}; ours with the enhanced mask decoder "
                        f"and the output only at the 15 % targets, attention backend {args.attention_backend}, "
                        f"against transformers {transformers.__version__} DebertaV2ForMaskedLM (no decoder, output at "
                        f"every position); the two alternate step by step, median of {args.steps} steps after "
                        f"{args.warmup} warm-up."])
    return results


if __name__ == "__main__":
    main()
