"""The attention backends against every peer at the headline shape, in one run (GPU).

    python -m bench.gpu_attention                    # v3-base MLM, seq 512, bf16, batch 32
    python -m bench.gpu_attention --dry-run          # CPU smoke test of this script: tiny shapes

Part 1, the model: one MLM training step (forward + backward, 15 % targets, no optimizer)
of DeBERTa-v3-base for each system, each in its own subprocess so that its peak memory is
its own: transformers' DebertaV2ForMaskedLM eager, with torch.compile, and with
disentangled-flash (when the package is importable); ours with each attention backend
(eager, sdpa, triton). Printed and written as each one finishes: tokens/s, peak allocated
memory, and the ratios to the best peer (the fastest transformers variant) and to its memory.

Part 2, the attention alone (forward + backward, 12 heads of 64, v3 buckets, 16384 tokens
at 512 and at 2048): our backends, and flex_attention with the c2p/p2c terms as a score
modifier reading precomputed [B, H, L, 2S] products (a candidate second backend).

Nothing is installed here; a system that cannot run records why and the run goes on.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

import torch

from bench.common import REPO, add_json_argument, command_line, write_result

MODEL_SYSTEMS = ("hf-eager", "hf-compile", "hf-disentangled-flash", "ours-eager", "ours-sdpa", "ours-triton")
KERNEL_SYSTEMS = ("eager", "sdpa", "triton", "flex")


# ---------------------------------------------------------------------------------------
# Part 1: the model step
# ---------------------------------------------------------------------------------------
def build_model(system: str, args):
    from deberta import DebertaConfig
    from deberta import build_model as build_ours
    from deberta.checkpoint import hf_config

    config = DebertaConfig.from_preset(args.preset, emd_layers=0, **args.model_overrides)
    if system.startswith("ours-"):
        return build_ours(config.replace(attention_backend=system.removeprefix("ours-")), "masked_lm")
    import transformers

    model = transformers.DebertaV2ForMaskedLM(transformers.DebertaV2Config(**hf_config(config, "masked_lm")))
    if system == "hf-disentangled-flash":
        from disentangled_flash import optimize_deberta_training  # raises where it is not installed

        model = model.to(args.device)
        optimize_deberta_training(model.deberta, backend="triton")
    return model


def model_worker(system: str, args) -> dict:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    model = build_model(system, args).to(device).train()
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(5, vocab, (args.batch, args.seq), generator=generator).to(device)
    targets = torch.rand(args.batch, args.seq, generator=generator) < 0.15
    labels = torch.where(targets, ids.cpu(), torch.full_like(ids.cpu(), -100)).to(device)
    forward = model
    if system == "hf-compile":
        forward = torch.compile(model)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = forward(input_ids=ids, labels=labels).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"seconds_per_step": seconds, "tokens_per_s": args.batch * args.seq / seconds, "peak_gib": peak}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------
# Part 2: the attention alone
# ---------------------------------------------------------------------------------------
def attention_inputs(batch, length, device, dtype, heads=12, head_dim=64, buckets=256):
    from deberta import DebertaConfig
    from deberta.model import relative_position_index

    config = DebertaConfig(position_buckets=buckets, max_relative_positions=512)
    span = config.relative_span

    def leaf(*shape):
        return torch.randn(*shape, device=device, dtype=dtype).requires_grad_()

    tensors = [leaf(batch, heads, length, head_dim) for _ in range(3)]
    tensors += [leaf(heads, 2 * span, head_dim) for _ in range(2)]
    mask = torch.ones(batch, length, dtype=torch.long, device=device)
    mask[1:, length * 3 // 4:] = 0  # padding in every row but the first
    index = relative_position_index(length, config, device)
    return tensors, index, mask, 1 / math.sqrt(head_dim * 3)


def flex_disentangled(query, key, value, pos_key, pos_query, index, mask, scale):
    """flex_attention with c2p and p2c as a score modifier: the [B, H, L, 2S] products are
    precomputed (as in relative_terms) and gathered per score; padded keys masked."""
    from torch.nn.attention.flex_attention import flex_attention

    c2p = torch.matmul(query * scale, pos_key.transpose(-1, -2))  # [B, H, L, 2S]
    p2c = torch.matmul(key, (pos_query * scale).transpose(-1, -2))  # [B, H, L, 2S]
    key_real = mask.bool()

    def score_mod(score, b, h, q_idx, kv_idx):
        relative = index[q_idx, kv_idx]
        score = score + c2p[b, h, q_idx, relative] + p2c[b, h, kv_idx, relative]
        return torch.where(key_real[b, kv_idx], score, -float("inf"))

    return flex_attention(query, key, value, score_mod=score_mod, scale=scale)


def kernel_worker(system: str, args) -> dict:
    from deberta.attention import get_backend

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    tokens = args.kernel_tokens
    results = {}
    for length in args.kernel_lengths:
        batch = max(1, tokens // length)
        tensors, index, mask, scale = attention_inputs(batch, length, device, dtype,
                                                       heads=args.kernel_heads, head_dim=args.kernel_head_dim)
        if system == "flex":
            attend = torch.compile(flex_disentangled)
            run = lambda: attend(*tensors, index, mask, scale)  # noqa: E731
        else:
            backend = get_backend(system)
            run = lambda: backend(*tensors, index, mask, scale, query_mask=mask)  # noqa: E731
        grad = torch.randn(batch, args.kernel_heads, length, args.kernel_head_dim, device=device, dtype=dtype)

        def step():
            torch.autograd.backward(run(), grad)
            for t in tensors:
                t.grad = None

        for _ in range(args.warmup):
            step()
        synchronize(device)
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        synchronize(device)
        milliseconds = (time.perf_counter() - start) / args.steps * 1e3
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30 if device.type == "cuda" else None
        results[str(length)] = {"batch": batch, "ms_forward_backward": milliseconds, "extra_peak_gib": peak}
    return results


# ---------------------------------------------------------------------------------------
# The parent: one subprocess per system, results written as they come
# ---------------------------------------------------------------------------------------
def run_worker(part: str, system: str, argv: list[str], timeout: float) -> dict:
    command = [sys.executable, "-m", "bench.gpu_attention", *argv, "--worker", f"{part}:{system}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {done.returncode}: {tail[0][:300]}"}
    return json.loads(lines[-1].removeprefix("RESULT "))


def summarise_models(models: dict) -> dict:
    peers = {k: v for k, v in models.items() if k.startswith("hf-") and "tokens_per_s" in v}
    if not peers:
        return {}
    best = max(peers, key=lambda k: peers[k]["tokens_per_s"])
    summary = {"best_peer": best}
    for name, figures in models.items():
        if name.startswith("ours-") and "tokens_per_s" in figures:
            summary[name] = {"speed_vs_best_peer": figures["tokens_per_s"] / peers[best]["tokens_per_s"]}
            eager = models.get("hf-eager", {})
            if figures.get("peak_gib") and eager.get("peak_gib"):
                summary[name]["memory_vs_hf_eager"] = figures["peak_gib"] / eager["peak_gib"]
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="deberta-v3-base")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default=",".join(MODEL_SYSTEMS), help="comma-separated; '' for none")
    parser.add_argument("--kernels", default=",".join(KERNEL_SYSTEMS), help="comma-separated; '' for none")
    parser.add_argument("--kernel_lengths", default="512,2048")
    parser.add_argument("--kernel_tokens", type=int, default=16384)
    parser.add_argument("--kernel_heads", type=int, default=12)
    parser.add_argument("--kernel_head_dim", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=240, help="seconds for each system")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU smoke test of the script: a 2-layer model, batch 2 x 64, fp32, 1 step, "
                             "no torch.compile")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    add_json_argument(parser, "gpu_attention")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    args.model_overrides = {}
    if args.dry_run:
        args.device, args.dtype, args.batch, args.seq, args.steps, args.warmup = "cpu", "fp32", 2, 64, 1, 0
        args.model_overrides = dict(num_hidden_layers=2, vocab_size=1000)
        args.kernel_lengths, args.kernel_tokens, args.kernel_heads = "64", 128, 2
        if "--models" not in " ".join(argv):  # compiling takes minutes on a CPU
            args.models = ",".join(system for system in MODEL_SYSTEMS if system != "hf-compile")
    args.kernel_lengths = [int(n) for n in str(args.kernel_lengths).split(",")]

    if args.worker:  # a subprocess: one system, one JSON line
        part, system = args.worker.split(":")
        result = model_worker(system, args) if part == "model" else kernel_worker(system, args)
        print("RESULT " + json.dumps(result))
        return

    shape = {"preset": args.preset, "batch": args.batch, "seq": args.seq, "dtype": args.dtype,
             "workload": "MLM training step (forward + backward, 15 % targets, no optimizer)"}
    record = {"shape": shape, "models": {}, "kernels": {}}
    print(f"{args.preset} MLM, batch {args.batch} x {args.seq}, {args.dtype}, on {args.device}", flush=True)
    for system in filter(None, args.models.split(",")):
        record["models"][system] = figures = run_worker("model", system, argv, args.timeout)
        record["summary"] = summarise_models(record["models"])
        if "error" in figures:
            print(f"  {system:24s} not measured: {figures['error']}", flush=True)
        else:
            peak = f"{figures['peak_gib']:.1f} GiB" if figures["peak_gib"] is not None else "-"
            ratio = record["summary"].get(system, {}).get("speed_vs_best_peer")
            ratio = f"  x{ratio:.2f} of the best peer ({record['summary']['best_peer']})" if ratio else ""
            print(f"  {system:24s} {figures['tokens_per_s'] / 1e3:8.1f} K tokens/s  peak {peak}{ratio}", flush=True)
        save(args, argv, record)
    for system in filter(None, args.kernels.split(",")):
        record["kernels"][system] = figures = run_worker("kernel", system, argv, args.timeout)
        if "error" in figures:
            print(f"  attention {system:14s} not measured: {figures['error']}", flush=True)
        else:
            for length, row in figures.items():
                extra = f"{row['extra_peak_gib']:.2f} GiB" if row["extra_peak_gib"] is not None else "-"
                print(f"  attention {system:8s} L={length:5s} batch {row['batch']:3d}: "
                      f"{row['ms_forward_backward']:8.2f} ms fwd+bwd, extra peak {extra}", flush=True)
        save(args, argv, record)
    return record


def save(args, argv, record) -> None:
    """Everything measured so far, so that a run cut short still reports."""
    def number(value, form):
        return "-" if value is None else form.format(value)

    rows = []
    for system, figures in record["models"].items():
        ratios = record.get("summary", {}).get(system, {})
        if "error" in figures:
            rows.append([system, "not measured", "-", "-", "-"])
            continue
        rows.append([system, number(figures["tokens_per_s"] / 1e3, "{:.1f} K"),
                     number(ratios.get("speed_vs_best_peer"), "x{:.2f}"), number(figures["peak_gib"], "{:.1f}"),
                     number(ratios.get("memory_vs_hf_eager"), "x{:.2f}")])
    notes = [f"{name}: {figures['error']}" for name, figures in record["models"].items() if "error" in figures]
    for system, figures in record["kernels"].items():
        if "error" in figures:
            notes.append(f"attention alone, {system}: not measured ({figures['error']})")
            continue
        for length, row in figures.items():
            notes.append(f"attention alone, {system}, L={length} x batch {row['batch']}: "
                         f"{row['ms_forward_backward']:.2f} ms forward+backward, "
                         f"extra peak {number(row['extra_peak_gib'], '{:.2f} GiB')}")
    shape = record["shape"]
    write_result(args.json, benchmark="gpu_attention",
                 title=f"Attention backends against the peers: {shape['preset']} MLM, batch {shape['batch']} x "
                       f"{shape['seq']}, {shape['dtype']}",
                 command=command_line("bench.gpu_attention", argv), results=record,
                 columns=["system", "tokens/s", "vs best peer", "peak GiB", "memory vs transformers eager"],
                 rows=rows, notes=notes)


if __name__ == "__main__":
    main()
