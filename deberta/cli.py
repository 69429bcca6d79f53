"""Every command of the project is built the same way: from the dataclasses of its components.

Each field of a component's config dataclass becomes the flag of the same name; the help
comes from ``option(default, help)``. Parsing, type checks and config files are
jsonargparse's (a well-kept library that Lightning's CLI is built on): it reads typed
values (``Optional[float]``, ``int``), loads YAML or JSON config files and prints the
resolved config (``--print_config``), which a hand-written argparse generator would have
to reimplement. After parsing, every dataclass is constructed, so its ``__post_init__``
checks the values and a bad one exits with the message that names the field.

One precedence everywhere, highest first:

    1. flags on the command line
    2. the config file (``--config run.yaml``; YAML or JSON, flat ``name: value`` pairs),
       wherever ``--config`` stands on the command line
    3. the command's own defaults for a named preset (e.g. ``pretrain --recipe``)
    4. the DeepSpeed JSON, for the settings it holds (batch sizes, precision, ZeRO stage,
       gradient clipping): training fields left unset (0, -1, "auto" or None) take its value
    5. the dataclass defaults

Booleans are written the same way in every command: ``--name``, ``--no_name`` (or
``--no-name``), and ``--name true|false``. A list field (``list[str]``) takes its flag once
per item (``--input a --input b``) or a list at once (``--input '[a, b]'``); the items given
on the command line replace the config file's list, as any flag does.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import sys
import typing
from dataclasses import field
from typing import Any, Optional, Sequence

import yaml
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

from .errors import DEBUG_FLAG, DEBUG_HELP, process_rank

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def option(default: Any, help: str, aliases: Sequence[str] = ()) -> Any:
    """A dataclass field with its help text (and older flag names that still work).

    A list, dict or set default is copied for each instance (dataclasses refuse a shared one)."""
    metadata = {"help": help, "aliases": tuple(aliases)}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: copy.copy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def required(help: str, aliases: Sequence[str] = ()) -> Any:
    return field(metadata={"help": help, "aliases": tuple(aliases), "required": True})


class Command:
    """The parser of one command over the config dataclasses of its components.

        command = Command("deberta-pretrain", "what it does", {"run": RunConfig, "optimizer": OptimizerConfig})
        configs = command.parse(argv)        # {"run": RunConfig(...), "optimizer": OptimizerConfig(...)}
    """

    def __init__(self, prog: str, description: str, sections: dict[str, type], defaults: Optional[dict] = None,
                 extra: Optional[dict[str, dict]] = None):
        """``defaults`` replaces dataclass defaults for this command (e.g. finetuning's Adam beta2);
        ``extra`` adds plain flags that are not config fields (name -> add_argument keywords)."""
        self.sections = dict(sections)
        self.parser = ArgumentParser(prog=prog, description=description, exit_on_error=True)
        self.parser.add_argument("--config", action=ActionConfigFile,
                                 help="YAML or JSON file of flag values; flags on the command line win")
        # Read by deberta.errors.run_command, which every entry point runs under.
        self.parser.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)
        if process_rank() != 0:
            # Under a launcher every rank parses the same command line: rank 0 alone says what is wrong.
            self.parser.error = _exit_quietly
        for name, keywords in (extra or {}).items():
            self.parser.add_argument(f"--{name}", **keywords)
        self.booleans: set[str] = set()
        self.names: dict[str, str] = {}  # field -> section
        self.aliases: set[str] = set()
        self.lists: dict[str, str] = {}  # flag name (field or alias) of a list field -> field
        for section, cls in self.sections.items():
            self._add_section(section, cls)
        if defaults:
            self.set_defaults(defaults)

    def _add_section(self, section: str, cls: type) -> None:
        group = self.parser.add_argument_group(section)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in self.names:
                raise ValueError(f"field {f.name!r} of {cls.__name__} is also in section {self.names[f.name]!r}")
            self.names[f.name] = section
            help_text = f.metadata.get("help", "")
            aliases = f.metadata.get("aliases", ())
            self.aliases.update(aliases)
            flags = [f"--{f.name}"] + [f"--{alias}" for alias in aliases]
            if typing.get_origin(hints[f.name]) is list:
                self.lists.update({name: f.name for name in (f.name, *aliases)})
            if hints[f.name] is bool:
                self.booleans.add(f.name)
                self.booleans.update(aliases)
                group.add_argument(*flags, action=ActionYesNo, default=f.default, help=help_text)
            elif f.metadata.get("required"):
                group.add_argument(*flags, type=hints[f.name], required=True, help=help_text)
            else:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                group.add_argument(*flags, type=hints[f.name], default=default, help=help_text)

    def set_defaults(self, values: dict) -> None:
        unknown = sorted(set(values) - set(self.names))
        if unknown:
            raise ValueError(f"defaults for unknown settings {unknown}")
        self.parser.set_defaults(**values)

    def add_section(self, section: str, cls: type) -> None:
        """A component known only after a first look at the command line (a plugin's options)."""
        self.sections[section] = cls
        self._add_section(section, cls)

    def _canonical(self, flag: str) -> str:
        """``--no-x`` -> ``--no_x``; ``--a-b`` -> ``--a_b`` for known names (``--local-rank``
        from launchers included); anything else is left for the parser to reject."""
        name = flag[2:].replace("-", "_")
        known = name in self.names or name in self.aliases or name.removeprefix("no_") in self.booleans \
            or name in ("local_rank", "config")
        return "--" + name if known else flag

    def normalize(self, argv: Sequence[str]) -> list[str]:
        """One boolean syntax (``--x true`` / ``--x false`` become ``--x`` / ``--no_x``), the
        dashed spellings, the items of a repeated list flag gathered into one list, and
        ``--config`` moved to the front so that flags win over the file."""
        configs: list[str] = []
        out: list[str] = []
        lists: dict[str, list] = {}
        items = list(argv)
        i = 0
        while i < len(items):
            flag, value = items[i], None
            if flag.startswith("--"):
                flag, _, attached = flag.partition("=")
                flag, value = self._canonical(flag), attached if _ else None
            takes_word = flag.startswith("--") and flag[2:] in self.booleans
            takes_list = flag.startswith("--") and flag[2:] in self.lists and i + 1 < len(items)
            if value is None and (flag == "--config" or takes_list) or (
                    takes_word and i + 1 < len(items) and items[i + 1].lower() in TRUE_WORDS + FALSE_WORDS):
                value = items[i + 1] if value is None else value
                i += 1
            i += 1
            if flag == "--config":
                configs += [flag, value]
            elif takes_word:
                if value is not None and value.lower() not in TRUE_WORDS + FALSE_WORDS:
                    self.parser.error(f"{flag} takes true or false, not {value!r}")
                out.append(flag if value is None or value.lower() in TRUE_WORDS else "--no_" + flag[2:])
            elif flag.startswith("--") and flag[2:] in self.lists and value is not None:
                lists.setdefault(self.lists[flag[2:]], []).extend(_list_items(value))
            else:
                out += [flag] if value is None else [flag, value]
        for name, values in lists.items():
            out += [f"--{name}", json.dumps(values)]
        return configs + out

    def parse_namespace(self, argv: Optional[Sequence[str]] = None):
        return self.parser.parse_args(self.normalize(sys.argv[1:] if argv is None else argv))

    def build(self, namespace) -> dict[str, Any]:
        """The section dataclasses from a parsed namespace; a bad value exits naming it."""
        configs = {}
        for section, cls in self.sections.items():
            values = {f.name: namespace[f.name] for f in dataclasses.fields(cls)}
            try:
                configs[section] = cls(**values)
            except (ValueError, TypeError) as error:
                self.parser.error(str(error))
        return configs

    def parse(self, argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
        return self.build(self.parse_namespace(argv))


def _exit_quietly(message: str, ex: Optional[Exception] = None) -> None:
    raise SystemExit(2)


def _list_items(value: str) -> list:
    """``'[a, b]'`` (a YAML or JSON list) gives its items; anything else is one item."""
    if value.lstrip().startswith("["):
        try:
            loaded = yaml.safe_load(value)
        except yaml.YAMLError:
            loaded = None
        if isinstance(loaded, list):
            return loaded
    return [value]
