"""Padded against unpadded (packed) finetuning steps on real GLUE length distributions.

    python -m bench.finetune_unpadded                  # SST-2 sentences and RTE pairs, CPU
    python -m bench.finetune_unpadded --steps 20 --hidden_size 384

Batches are drawn at random from the training files (SST-2: single sentences; RTE: real
sentence pairs, longer premises than MNLI's), tokenized with the task's own code path,
and each batch is run both ways in alternation: forward, backward and AdamW of a
sequence classifier, padded to the batch's longest (``finetune.data.pad_batch``) or
packed end to end (``pack_batch``, ``--unpadded``). Tokens/s counts real tokens only;
the figure is the median of the per-step times, so a busy machine's spikes weigh little.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

import torch

from bench.common import REPO, add_json_argument, command_line, write_result
from deberta import DebertaConfig, build_model, load_tokenizer
from finetune.data import pack_batch, pad_batch, read_table

GLUE = REPO.parent / "shared" / "data" / "glue"
# (name, file, text columns, what it stands for)
DISTRIBUTIONS = [
    ("SST-2", GLUE / "SST-2" / "train.tsv", ("sentence",), "single sentences"),
    ("RTE", GLUE / "RTE" / "train.tsv", ("sentence1", "sentence2"), "sentence pairs (MNLI-like, longer premises)"),
]


def features_of(path: Path, columns, tokenizer, max_length: int, limit: int, rng: random.Random) -> list[dict]:
    rows = read_table(path)
    rows = rng.sample(rows, min(limit, len(rows)))
    features = []
    for row in rows:
        texts = [tokenizer.encode(str(row.get(path, c))) for c in columns]
        feature = tokenizer.build_inputs(texts[0], texts[1] if len(texts) > 1 else None, max_length)
        feature["labels"] = int(rng.random() < 0.5)
        features.append(feature)
    return features


def train_step(model, optimizer, batch) -> None:
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(model, optimizer, features, batch_size, steps, warmup, rng) -> dict:
    """Per-step seconds of each mode on the same batches, padded and packed in turn."""
    seconds = {"padded": [], "unpadded": []}
    real_tokens = padded_tokens = 0
    for step in range(warmup + steps):
        chunk = rng.sample(features, batch_size)
        batches = {"padded": pad_batch(chunk, 0), "unpadded": pack_batch(chunk)}
        order = ["padded", "unpadded"] if step % 2 == 0 else ["unpadded", "padded"]
        for mode in order:
            started = time.perf_counter()
            train_step(model, optimizer, batches[mode])
            if step >= warmup:
                seconds[mode].append(time.perf_counter() - started)
        if step >= warmup:
            real_tokens += int(batches["unpadded"]["cu_seqlens"][-1])
            padded_tokens += batches["padded"]["input_ids"].numel()
    tokens_per_step = real_tokens / steps
    result = {"tokens_per_step": tokens_per_step, "padding_fraction": 1 - real_tokens / padded_tokens}
    for mode, times in seconds.items():
        result[f"{mode}_tokens_per_s"] = tokens_per_step / statistics.median(times)
        result[f"{mode}_step_ms_median"] = 1000 * statistics.median(times)
    result["ratio"] = result["unpadded_tokens_per_s"] / result["padded_tokens_per_s"]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", default=str(REPO / "tests" / "assets" / "spm.model"))
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=32)
    # 256: the test vocabulary cuts words about twice as finely as DeBERTa's 128K one, so 256
    # of its tokens truncate the pairs about as rarely as GLUE's usual 128 with a released model.
    parser.add_argument("--max_seq_length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12, help="measured steps per mode and distribution")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--examples", type=int, default=4000, help="rows sampled from each file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a busy machine)")
    parser.add_argument("--backend", default="eager", help="attention backend")
    add_json_argument(parser, "finetune_unpadded")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.tokenizer)
    config = DebertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=args.hidden_size,
                           num_hidden_layers=args.layers, num_attention_heads=args.hidden_size // 64,
                           intermediate_size=4 * args.hidden_size, max_position_embeddings=512,
                           attention_backend=args.backend)
    rng = random.Random(0)
    load_before = round(os.getloadavg()[0], 1)
    results, rows = {}, []
    for name, path, columns, described in DISTRIBUTIONS:
        features = features_of(path, columns, tokenizer, args.max_seq_length, args.examples, rng)
        lengths = sorted(len(f["input_ids"]) for f in features)
        torch.manual_seed(0)
        model = build_model(config, "sequence_classification").train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        result = measure(model, optimizer, features, args.batch_size, args.steps, args.warmup, rng)
        result.update(mean_length=statistics.mean(lengths), median_length=statistics.median(lengths),
                      longest=lengths[-1], file=str(path.relative_to(REPO.parent)), described=described)
        results[name] = result
        print(f"{name}: mean length {result['mean_length']:.1f}, padding {100 * result['padding_fraction']:.0f} % "
              f"of a padded batch; padded {result['padded_tokens_per_s']:,.0f} tok/s, unpadded "
              f"{result['unpadded_tokens_per_s']:,.0f} tok/s, ratio {result['ratio']:.2f}x")
        rows.append([f"{name}: {described}", f"{result['mean_length']:.1f} / {result['longest']}",
                     f"{100 * result['padding_fraction']:.0f} %", f"{result['padded_tokens_per_s']:,.0f}",
                     f"{result['unpadded_tokens_per_s']:,.0f}", f"{result['ratio']:.2f}x"])
    load_after = round(os.getloadavg()[0], 1)
    write_result(args.json, benchmark="finetune_unpadded", title="Unpadded finetuning steps on the CPU",
                 command=command_line("bench.finetune_unpadded", argv), results={**results, "settings": vars(args)},
                 columns=["length distribution", "mean / longest tokens", "padding in a padded batch",
                          "padded tokens/s", "unpadded tokens/s", "unpadded / padded"],
                 rows=rows,
                 notes=[f"Sequence classifier of {args.layers} layers, width {args.hidden_size} (v3 layout: relative "
                        f"attention, log buckets, shared key), attention backend {args.backend}; batch "
                        f"{args.batch_size}, max_seq_length {args.max_seq_length}, forward + backward + AdamW, "
                        f"{args.threads} torch thread(s). Tokens: the 1000-piece test vocabulary "
                        f"(tests/assets/spm.model), which cuts words finer than DeBERTa's 128K vocabulary, so "
                        f"the sequences are about twice as long as with a released model (hence max_seq_length "
                        f"256, which cuts the pairs about as rarely as 128 does there); the small vocabulary also "
                        f"makes the optimizer step, the same in both modes, a small share of the step.",
                        f"Median of {args.steps} alternating steps per mode, the same batches in both modes. "
                        f"Load average {load_before} before and {load_after} after, on {os.cpu_count()} "
                        f"cores shared with other jobs: the ratios are steadier than the absolute figures."])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
