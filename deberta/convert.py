"""Convert between model folders.

    python -m deberta.convert SRC_DIR DST_DIR --to native|hf [--head HEAD]

SRC_DIR is a native, Hugging Face (DeBERTa / DeBERTa-v2) or official (pytorch.model.bin +
model_config.json) folder. The tokenizer files found in SRC_DIR are carried over, and so are
a finetuned model's label names, task and results (``id2label`` / ``label2id`` in a Hugging
Face folder) unless ``--head`` replaces its head. The options come from ``ConvertConfig``
through ``deberta.cli.Command``, so ``--config FILE`` (YAML or JSON) may hold them; flags on
the command line win.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal, Optional

from .checkpoint import FINETUNE_RECORD, export_hf, load_model, read_config, read_finetune_record, save_model
from .cli import Command, option, required
from .errors import run_command
from .model import HEADS
from .tokenizer import load_tokenizer

HeadName = Literal[tuple(sorted(HEADS))]


@dataclass
class ConvertConfig:
    """The options of ``python -m deberta.convert SRC DST`` (the two folders are positional)."""
    to: Literal["native", "hf"] = required("format to write")
    head: Optional[HeadName] = option(None, "keep the backbone only, or put a new head on it "
                                            "(default: the source's head)")


def build_command() -> Command:
    command = Command("python -m deberta.convert", __doc__.split("\n\n")[0], {"convert": ConvertConfig})
    command.parser.add_argument("src", help="model folder to read")
    command.parser.add_argument("dst", help="folder to write")
    return command


def main(argv=None) -> int:
    """Exit codes: 0 written, 1 an unreadable source or an unwritable target, 2 a bad command line."""
    return run_command(convert, argv)


def convert(argv: list[str]) -> int:
    command = build_command()
    args = command.parse_namespace(argv)
    config = command.build(args)["convert"]
    model = load_model(args.src, head=config.head)
    try:
        tokenizer = load_tokenizer(args.src)
    except FileNotFoundError:
        tokenizer = None
        print(f"note: no tokenizer files in {args.src}; writing the weights only", file=sys.stderr)
    # Label names, task and results describe the stored head; a new head leaves them behind.
    finetuned = read_finetune_record(args.src) if config.head in (None, read_config(args.src)[1]) else None
    if config.to == "native":
        save_model(model, args.dst, tokenizer, extra={FINETUNE_RECORD: finetuned} if finetuned else None)
    else:
        export_hf(model, args.dst, tokenizer, finetune=finetuned)
    print(f"wrote {config.to} {model.head} model ({model.config.model_type}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters) to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
