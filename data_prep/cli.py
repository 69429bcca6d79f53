"""The command line: ``python -m data_prep {tokenizer,shard,verify,inspect}``."""
from __future__ import annotations

import argparse
import sys

from .sharding import ShardConfig, run_shard


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    tokenizer = commands.add_parser("tokenizer", help="train a SentencePiece tokenizer, or copy an existing one")
    tokenizer.add_argument("--input", action="append", default=[], help="file pattern (repeatable)")
    tokenizer.add_argument("--vocab_size", type=int, default=128000,
                           help="SentencePiece pieces; [MASK] comes after them (default 128000)")
    tokenizer.add_argument("--output", required=True, help="folder; gets spm.model")
    tokenizer.add_argument("--from", dest="source",
                           help="copy this SentencePiece .model, GPT-2 vocab.json (merges.txt beside it) "
                                "or tokenizer folder instead of training")
    tokenizer.add_argument("--max_sentences", type=int, default=2_000_000, help="size of the training sample")
    tokenizer.add_argument("--seed", type=int, default=0, help="which sample (reproducible)")
    tokenizer.add_argument("--model_type", default="unigram", choices=("unigram", "bpe"))
    tokenizer.add_argument("--character_coverage", type=float, default=0.9995)
    tokenizer.add_argument("--text_field", default="text")

    shard = commands.add_parser("shard", help="encode a corpus into packed token-id shards")
    shard.add_argument("--input", action="append", required=True,
                       help="file pattern: .txt, .jsonl, .parquet (each optionally .gz) or a datasets folder; repeatable")
    shard.add_argument("--tokenizer", required=True, help="spm.model, vocab.json or a tokenizer folder")
    shard.add_argument("--output", required=True, help="folder for shards and manifest.json")
    shard.add_argument("--seq_len", type=int, default=512, help="tokens per sequence incl. [CLS] and [SEP]")
    shard.add_argument("--valid_fraction", type=float, default=0.005,
                       help="share of documents (chosen by content hash) in the valid split")
    shard.add_argument("--workers", type=int, default=1, help="processes per rank (default 1)")
    shard.add_argument("--dedup", action="store_true", help="drop exact duplicate documents")
    shard.add_argument("--shard_size_mb", type=float, default=256.0, help="size of each .bin (default 256)")
    shard.add_argument("--piece_size_mb", type=float, default=64.0,
                       help="plain .txt/.jsonl files are read in pieces of this size, in parallel")
    shard.add_argument("--text_field", default="text", help="field of .jsonl/.parquet/datasets records")
    shard.add_argument("--allow_unreadable", action="store_true",
                       help="finish without input files that cannot be read, listing them in the manifest")
    shard.add_argument("--overwrite", action="store_true", help="replace an output made with other settings")
    shard.add_argument("--progress_interval", type=float, default=10.0, help="seconds between progress lines")

    verify = commands.add_parser("verify", help="check an output folder; exit 1 naming what is wrong")
    verify.add_argument("data_dir")
    verify.add_argument("--tokenizer", help="also check that this tokenizer is the one the data was made with")
    verify.add_argument("--quick", action="store_true", help="sizes and headers only, no sha256")

    inspect = commands.add_parser("inspect", help="counts, and decoded samples")
    inspect.add_argument("data_dir")
    inspect.add_argument("--decode", type=int, default=0, help="print the first N sequences as text")
    inspect.add_argument("--split", default="train")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "tokenizer":
        from .tokenizer_training import copy_tokenizer, train_tokenizer

        if args.source:
            copy_tokenizer(args.source, args.output)
        elif not args.input:
            print("data_prep tokenizer: give --input patterns to train on, or --from an existing tokenizer",
                  file=sys.stderr)
            return 2
        else:
            train_tokenizer(args.input, args.vocab_size, args.output, args.max_sentences, args.seed,
                            args.model_type, args.character_coverage, args.text_field)
        return 0
    if args.command == "shard":
        try:
            config = ShardConfig(args.input, args.tokenizer, args.output, args.seq_len, args.valid_fraction,
                                 args.dedup, args.workers, args.shard_size_mb, args.piece_size_mb,
                                 args.text_field, args.allow_unreadable, args.overwrite, args.progress_interval)
        except ValueError as error:
            print(f"data_prep shard: error: {error}", file=sys.stderr)
            return 2
        return run_shard(config)
    if args.command == "verify":
        from .checks import verify

        problems = verify(args.data_dir, args.tokenizer, args.quick)
        for problem in problems:
            print(f"data_prep verify: {problem}", file=sys.stderr)
        if problems:
            print(f"data_prep verify: {args.data_dir}: {len(problems)} problem(s)", file=sys.stderr)
            return 1
        print(f"data_prep verify: {args.data_dir}: OK")
        return 0
    from .checks import inspect

    print(inspect(args.data_dir, args.decode, args.split))
    return 0
