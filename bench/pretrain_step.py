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
        self.peak_gib = float("nan")

    def step(self, timed: bool) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        self.loss_fn().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_gib = torch.cuda.max_memory_allocated() / 2 ** 30
        if timed:
            self.seconds.append(time.perf_counter() - start)


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
    add_json_argument(parser, "pretrain_step")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides = {**parse_overrides(args.set_model), "attention_backend": args.attention_backend,
                 "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    config = model_config(args.model_config, overrides)
    ids, mask, labels = make_batch(args.batch_size, args.seq_len, config.vocab_size, device)
    tokens = args.batch_size * args.seq_len
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

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
