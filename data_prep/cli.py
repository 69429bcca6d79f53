"""The command line: ``python -m data_prep {tokenizer,shard,verify,inspect}``.

Each sub-command is a ``deberta.cli.Command`` over the dataclass that holds its options
(``TokenizerConfig``, ``ShardConfig``, ``VerifyConfig``, ``InspectConfig``), so every
option is a flag of the field's name, booleans read ``--x``, ``--no_x`` or ``--x true|false``,
``--input`` is given once per pattern, and ``--config run.yaml`` supplies any of them
(flags on the command line win over the file). Run ``python -m data_prep COMMAND --help``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Optional

from deberta.cli import Command, option
from deberta.errors import run_command

PROG = "python -m data_prep"


@dataclass
class VerifyConfig:
    """The options of ``python -m data_prep verify DATA_DIR``."""
    tokenizer: Optional[str] = option(None, "also check that this tokenizer is the one the data was made with")
    quick: bool = option(False, "sizes and headers only, no sha256")


@dataclass
class InspectConfig:
    """The options of ``python -m data_prep inspect DATA_DIR``."""
    decode: int = option(0, "print the first N sequences as text")
    split: str = option("train", "which split to decode (train or valid)")

    def __post_init__(self):
        if self.decode < 0:
            raise ValueError(f"--decode {self.decode} must be at least 0")


def _tokenizer(argv: list[str]) -> int:
    from .tokenizer_training import TokenizerConfig, run_tokenizer

    command = Command(f"{PROG} tokenizer", SUBCOMMANDS["tokenizer"][0], {"tokenizer": TokenizerConfig})
    run_tokenizer(command.parse(argv)["tokenizer"])
    return 0


def _shard(argv: list[str]) -> int:
    from .sharding import ShardConfig, run_shard

    command = Command(f"{PROG} shard", SUBCOMMANDS["shard"][0], {"shard": ShardConfig})
    return run_shard(command.parse(argv)["shard"])


def _with_data_dir(name: str, cls: type, argv: list[str]) -> tuple[str, object]:
    """A sub-command whose one positional argument is the output folder of ``shard``."""
    command = Command(f"{PROG} {name}", SUBCOMMANDS[name][0], {name: cls})
    command.parser.add_argument("data_dir", help="output folder of `python -m data_prep shard`")
    namespace = command.parse_namespace(argv)
    return namespace.data_dir, command.build(namespace)[name]


def _verify(argv: list[str]) -> int:
    from .checks import verify, write_stamp

    data_dir, config = _with_data_dir("verify", VerifyConfig, argv)
    key = None if config.quick else _stamp_key_or_none(data_dir)  # the state that is about to be checked
    problems = verify(data_dir, config.tokenizer, config.quick)
    for problem in problems:
        print(f"data_prep verify: {problem}", file=sys.stderr)
    if problems:
        print(f"data_prep verify: {data_dir}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    stamp = write_stamp(data_dir, key) if key else None
    print(f"data_prep verify: {data_dir}: OK" + (f" (stamp {stamp}: pretraining will not read it all again)"
                                                 if stamp else ""))
    return 0


def _stamp_key_or_none(data_dir: str):
    from .checks import stamp_key
    try:
        return stamp_key(data_dir)
    except (OSError, ValueError, KeyError):
        return None  # verify names what is wrong with the folder


def _inspect(argv: list[str]) -> int:
    from .checks import inspect

    data_dir, config = _with_data_dir("inspect", InspectConfig, argv)
    print(inspect(data_dir, config.decode, config.split))
    return 0


# name -> (what it does, how it runs)
SUBCOMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "tokenizer": ("train a SentencePiece tokenizer, or copy an existing one", _tokenizer),
    "shard": ("encode a corpus into packed token-id shards", _shard),
    "verify": ("check an output folder; exit 1 naming what is wrong", _verify),
    "inspect": ("counts, and decoded samples", _inspect),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"usage: {PROG} {{{','.join(SUBCOMMANDS)}}} [options]", "",
             "Data preparation for DeBERTa pretraining: raw text to verified, packed token-id shards.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (what, _) in SUBCOMMANDS.items()]
    lines += ["", f"Run `{PROG} COMMAND --help` for the options of a command. Every command also reads",
              "--config FILE (YAML or JSON of option: value); flags on the command line win over it."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch on the first argument to the sub-command's own parser (exit 2 on a bad command
    line); a problem with the inputs ends with one ``error:`` line (``deberta.errors``)."""
    return run_command(_dispatch, argv)


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if not argv or argv[0] not in SUBCOMMANDS:
        problem = f"unknown command {argv[0]!r}" if argv else "a command is required"
        print(f"{usage()}\n\n{PROG}: error: {problem}", file=sys.stderr)
        return 2
    return SUBCOMMANDS[argv[0]][1](argv[1:])
