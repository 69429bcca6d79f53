"""SST-2 on CPU in about ten minutes: dev accuracy against the majority baseline, SiFT off and on.

    python -m bench.finetune_sst2 --model models/tiny            # a model folder, e.g. from
                                                                 # python -m pretrain.convert
    python -m bench.finetune_sst2                                # no --model: a small model with
                                                                 # random weights and the test vocabulary
Options: --data_dir (default ../shared/data/glue/SST-2), --max_train_examples, --epochs,
--threads, --sift_only / --no_sift. Each run writes its folder under --output_dir, the
summary goes to OUTPUT_DIR/summary.json and the figures to --json
(default bench/results/finetune_sst2.json).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import time
from pathlib import Path

import torch

from bench.common import REPO, add_json_argument, command_line, write_result
from deberta import DebertaConfig, build_model, load_tokenizer, save_model
from finetune import FinetuneConfig, Trainer
from finetune.config import TaskConfig
from finetune.data import read_table

# Small enough for a CPU budget: 4 layers of width 128 (~0.8M backbone parameters).
SMALL = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
             max_position_embeddings=128, position_buckets=32, max_relative_positions=128)


def random_model(folder: Path, tokenizer_path: Path) -> str:
    tokenizer = load_tokenizer(tokenizer_path)
    torch.manual_seed(0)
    model = build_model(DebertaConfig(vocab_size=tokenizer.vocab_size, **SMALL), "backbone")
    save_model(model, folder, tokenizer)
    return str(folder)


def majority_accuracy(dev: Path) -> float:
    labels = collections.Counter(str(row.values["label"]) for row in read_table(dev))
    return max(labels.values()) / sum(labels.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: random weights, see SMALL)")
    parser.add_argument("--tokenizer", default=str(REPO / "tests" / "assets" / "spm.model"),
                        help="tokenizer of the random model")
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "glue" / "SST-2"))
    parser.add_argument("--output_dir", default="runs/bench_sst2")
    parser.add_argument("--max_train_examples", type=int, default=20000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a busy machine)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--no_sift", action="store_true", help="only the run without SiFT")
    which.add_argument("--sift_only", action="store_true", help="only the run with SiFT")
    add_json_argument(parser, "finetune_sst2")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)

    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    model = args.model or random_model(output / "random_model", Path(args.tokenizer))
    summary = {"model": args.model or f"random weights {SMALL}",
               "majority_baseline": majority_accuracy(Path(args.data_dir) / "dev.tsv"), "runs": {}}
    for sift in [s for s in (False, True) if not (s and args.no_sift) and not (not s and args.sift_only)]:
        name = "sift" if sift else "plain"
        config = FinetuneConfig.create(
            task="sst-2", data_dir=args.data_dir, model=model, output_dir=str(output / name),
            max_train_examples=args.max_train_examples, epochs=args.epochs, micro_batch_size=args.batch_size,
            lr=args.learning_rate, max_seq_length=args.max_seq_length, eval_batch_size=256, sift=sift,
            eval_interval=200, log_interval=50, warmup_ratio=0.06)
        started = time.time()
        with contextlib.closing(Trainer(config)) as trainer:
            best = trainer.train()
        summary["runs"][name] = {"dev_accuracy": best["accuracy"], "best_step": best["step"],
                                 "seconds": round(time.time() - started)}
        (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    model_name = (f"`{args.model}`" if args.model else
                  "4 layers, width 128, random initial weights, the 1000-piece test vocabulary")
    rows = [["majority class", "", f"{100 * summary['majority_baseline']:.1f} %", ""]]
    rows += [[model_name, "on" if name == "sift" else "off", f"{100 * run['dev_accuracy']:.1f} %", f"{run['seconds']} s"]
             for name, run in summary["runs"].items()]
    write_result(args.json, benchmark="finetune_sst2", title="Finetuning SST-2 on the CPU",
                 command=command_line("bench.finetune_sst2", argv), results={**summary, "settings": vars(args)},
                 columns=["model", "SiFT", "dev accuracy", "time"], rows=rows,
                 notes=[f"{args.max_train_examples} training sentences, {args.epochs:g} epoch(s), batch "
                        f"{args.batch_size}, learning rate {args.learning_rate:g}, max_seq_length "
                        f"{args.max_seq_length}, {args.threads} torch thread(s); dev = the full SST-2 dev set. "
                        f"SiFT: lambda {TaskConfig.sift_lambda:g}, step {TaskConfig.sift_step_size:g}, noise "
                        f"{TaskConfig.sift_init_noise:g}."])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
