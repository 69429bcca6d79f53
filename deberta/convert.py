"""Convert between model folders.

    python -m deberta.convert SRC_DIR DST_DIR --to native|hf [--head HEAD]

SRC_DIR is a native, Hugging Face (DeBERTa / DeBERTa-v2) or official (pytorch.model.bin +
model_config.json) folder. The tokenizer files found in SRC_DIR are carried over.
"""
from __future__ import annotations

import argparse
import sys

from .checkpoint import CheckpointError, export_hf, load_model, save_model
from .model import HEADS
from .tokenizer import load_tokenizer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deberta.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="model folder to read")
    parser.add_argument("dst", help="folder to write")
    parser.add_argument("--to", choices=("native", "hf"), required=True, help="format to write")
    parser.add_argument("--head", choices=sorted(HEADS), default=None,
                        help="keep the backbone only, or put a new head on it (default: the source's head)")
    args = parser.parse_args(argv)
    try:
        model = load_model(args.src, head=args.head)
    except (CheckpointError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        tokenizer = load_tokenizer(args.src)
    except FileNotFoundError:
        tokenizer = None
        print(f"note: no tokenizer files in {args.src}; writing the weights only", file=sys.stderr)
    try:
        if args.to == "native":
            save_model(model, args.dst, tokenizer)
        else:
            export_hf(model, args.dst, tokenizer)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.to} {model.head} model ({model.config.model_type}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters) to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
