"""Recipes for the SuperGLUE, XNLI and ANLI tasks, every value with its source.

Official scripts exist for two of these tasks: COPA (``experiments/superglue/copa.sh``,
whose cases start from the released MNLI models: ``base-mnli`` ...) and ReCoRD
(``experiments/superglue/record.sh``). Every other task borrows the official GLUE script
of the most similar task, and each of its values says so (``Ours``, naming the script
line it took): RTE's for SuperGLUE RTE (the same data) and its diagnostics, CB and WSC
(small pair sets); QNLI's for BoolQ and MultiRC (question / passage pairs, 512 tokens);
MRPC's for WiC (short sentence pairs); MNLI's for XNLI (which trains on MNLI) and ANLI.
(``experiments/my_exp/run_anli.sh`` is not ANLI: it runs AlphaNLI, abductive NLI.)

Recipes are named ``<task>/<size class>`` with the official scripts' size classes:
``base``, ``large`` (v1), ``deberta-v3-base``, ``deberta-v3-large`` (mDeBERTa-v3-base
is ``deberta-v3-base``), and for COPA and ReCoRD every case their script has. A script
without a case for a size lends its ``base`` case, saying so. ``--fp16`` is left to the
DeepSpeed JSON. Written beside finetune/recipes.py's catalogue (same fields) for the
lead to merge into it.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Optional

from pretrain.recipes import Ours, Script, Source


@dataclass(frozen=True)
class ScriptCases:
    """An official script: the flags of its common command line and of each case."""
    path: str
    common: str
    cases: dict[str, str]
    mnli_start: tuple[str, ...] = ()  # cases whose model is an MNLI-finetuned one


# The scripts' flag lines as they read (--fp16 and --do_train left out).
COPA = ScriptCases("experiments/superglue/copa.sh", "--max_seq_len 136", {
    "base-mnli": "--num_train_epochs 3 --warmup 50 --learning_rate 1e-5 --train_batch_size 32 --cls_drop_out 0.1",
    "large-mnli": "--num_train_epochs 4 --warmup 30 --learning_rate 5e-6 --train_batch_size 16 --cls_drop_out 0.1",
    "xlarge-mnli": "--num_train_epochs 4 --warmup 30 --learning_rate 3e-6 --train_batch_size 24 --cls_drop_out 0.1",
    "xlarge-v2-mnli": "--num_train_epochs 4 --warmup 30 --learning_rate 2e-6 --train_batch_size 24 "
                      "--cls_drop_out 0.1",
    "xxlarge-v2-mnli": "--num_train_epochs 8 --warmup 30 --learning_rate 1e-6 --train_batch_size 24 "
                       "--cls_drop_out 0.1",
}, mnli_start=("base-mnli", "large-mnli", "xlarge-mnli", "xlarge-v2-mnli", "xxlarge-v2-mnli"))
RECORD = ScriptCases("experiments/superglue/record.sh", "--max_seq_len 512", {
    "base": "--num_train_epochs 3 --warmup 1000 --learning_rate 2e-5 --train_batch_size 64 --cls_drop_out 0.3",
    "large": "--num_train_epochs 3 --warmup 1000 --learning_rate 1e-5 --train_batch_size 64 --cls_drop_out 0.3",
    "xlarge": "--num_train_epochs 3 --warmup 1000 --learning_rate 7e-6 --train_batch_size 64 --cls_drop_out 0.3",
    "xlarge-v2": "--num_train_epochs 3 --warmup 1000 --learning_rate 5e-6 --train_batch_size 64 "
                 "--cls_drop_out 0.15",
    "xxlarge-v2": "--num_train_epochs 3 --warmup 1000 --learning_rate 3e-6 --accumulative_update 2 "
                  "--train_batch_size 64 --cls_drop_out 0.15",
    "deberta-v3-large": "--num_train_epochs 3 --warmup 500 --learning_rate 7e-6 --train_batch_size 64 "
                        "--cls_drop_out 0.1",
})
GLUE = {
    "rte": ScriptCases("experiments/glue/rte.sh", "", {
        "base": "--num_train_epochs 6 --warmup 100 --learning_rate 2e-5 --train_batch_size 32 --cls_drop_out 0.2 "
                "--max_seq_len 320",
        "large": "--num_train_epochs 6 --warmup 50 --learning_rate 1e-5 --train_batch_size 32 --cls_drop_out 0.2 "
                 "--max_seq_len 320",
        "deberta-v3-large": "--num_train_epochs 6 --warmup 50 --learning_rate 1e-5 --train_batch_size 32 "
                            "--max_seq_len 320 --cls_drop_out 0.3",
    }, mnli_start=("base", "large")),
    "qnli": ScriptCases("experiments/glue/qnli.sh", "", {
        "base": "--num_train_epochs 4 --warmup 500 --learning_rate 2e-5 --train_batch_size 32 --cls_drop_out 0.15 "
                "--max_seq_len 512",
        "large": "--num_train_epochs 4 --warmup 500 --learning_rate 1e-5 --train_batch_size 32 --cls_drop_out 0.15 "
                 "--max_seq_len 512",
        "deberta-v3-large": "--num_train_epochs 6 --warmup 200 --learning_rate 7e-6 --train_batch_size 64 "
                            "--max_seq_len 512 --cls_drop_out 0.2",
    }),
    "mrpc": ScriptCases("experiments/glue/mrpc.sh", "", {
        "base": "--num_train_epochs 6 --warmup 50 --learning_rate 2e-5 --train_batch_size 32 --cls_drop_out 0.15 "
                "--max_seq_len 128",
        "large": "--num_train_epochs 6 --warmup 50 --learning_rate 1e-5 --train_batch_size 32 --cls_drop_out 0.15 "
                 "--max_seq_len 128",
        "deberta-v3-large": "--num_train_epochs 6 --warmup 50 --learning_rate 6e-6 --train_batch_size 32 "
                            "--max_seq_len 128 --cls_drop_out 0.2",
    }, mnli_start=("base", "large")),
    "mnli": ScriptCases("experiments/glue/mnli.sh", "--max_seq_len 256", {
        "base": "--num_train_epochs 3 --warmup 1000 --learning_rate 3e-5 --train_batch_size 64 --cls_drop_out 0.1",
        "large": "--num_train_epochs 3 --warmup 1000 --learning_rate 1e-5 --train_batch_size 64 --cls_drop_out 0.2",
        "deberta-v3-base": "--num_train_epochs 3 --warmup 1000 --learning_rate 1.5e-5 --train_batch_size 64 "
                           "--cls_drop_out 0.1",
        "deberta-v3-large": "--num_train_epochs 2 --warmup 500 --learning_rate 7e-6 --train_batch_size 64 "
                            "--cls_drop_out 0.3",
    }),
}

# Tasks without an official script: the GLUE script they borrow, and why.
BORROWED = {
    "superglue-rte": ("rte", "SuperGLUE's RTE is GLUE's RTE data in JSON lines"),
    "ax-b": ("rte", "AX-b is predicted by the RTE model"),
    "ax-g": ("rte", "AX-g is predicted by the RTE model"),
    "cb": ("rte", "CB is a small NLI set (250 training pairs), smaller still than RTE"),
    "wsc": ("rte", "WSC is a small pair-classification set (554 training examples)"),
    "boolq": ("qnli", "BoolQ pairs a question with a passage, as QNLI; passages need its 512 tokens"),
    "multirc": ("qnli", "MultiRC pairs a paragraph with a question and answer; paragraphs need 512 tokens"),
    "wic": ("mrpc", "WiC is short sentence pairs, a few thousand of them, as MRPC"),
    "xnli": ("mnli", "XNLI trains on MNLI"),
    **{task: ("mnli", "ANLI is three-way NLI with MNLI's labels and 163K training pairs (all rounds)")
       for task in ("anli", "anli-r1", "anli-r2", "anli-r3")},
}
SIZE_CLASSES = ("base", "large", "deberta-v3-base", "deberta-v3-large")

_FIELDS = {"--learning_rate": ("lr", float), "--num_train_epochs": ("epochs", float),
           "--train_batch_size": ("global_batch_size", int), "--cls_drop_out": ("cls_dropout", float),
           "--max_seq_len": ("max_seq_length", int), "--accumulative_update": ("grad_accum", int)}


@dataclass(frozen=True)
class Recipe:
    """As finetune/recipes.py's: flag values with their sources, and the task whose
    finetuned model the run starts from (``--init_task_model``), if any."""
    task: str
    size_class: str
    description: str
    settings: dict  # flag name -> (value, Source)
    starts_from: Optional[tuple[str, Source]] = None

    @property
    def values(self) -> dict[str, Any]:
        return {name: value for name, (value, _) in self.settings.items()}


def _values(flag: str, text: str) -> dict[str, Any]:
    if flag == "--warmup":  # --warmup_proportion: 1 or more counts steps, below 1 a fraction
        value = float(text)
        return {"warmup_steps": int(value)} if value >= 1 else {"warmup_ratio": value, "warmup_steps": 0}
    name, kind = _FIELDS[flag]
    return {name: kind(text)}


def recipe(task: str, size_class: str) -> Optional[Recipe]:
    """The recipe of ``task`` on a model of ``size_class``; None where none is offered."""
    own = {"copa": COPA, "record": RECORD}.get(task)
    script = own or (GLUE[BORROWED[task][0]] if task in BORROWED else None)
    if script is None:
        return None
    case = f"{size_class}-mnli" if script is COPA else size_class
    lent = case not in script.cases
    if lent and size_class not in SIZE_CLASSES:
        return None
    case = ("base-mnli" if script is COPA else "base") if lent else case
    settings: dict[str, tuple[Any, Source]] = {}
    for line, in_case in ((script.cases[case], case), (script.common, None)):
        words = line.split()
        for flag, text in zip(words[::2], words[1::2]):
            cited: Source = Script(script.path, in_case, flag, text)
            if own is None:
                cited = Ours(f"{task} has no official script; {BORROWED[task][1]}: {cited}")
            elif lent:
                cited = Ours(f"{script.path} has no {size_class} case; its {case} case: {cited}")
            settings.update({name: (value, cited) for name, value in _values(flag, text).items()})
    starts_from = None
    if case in script.mnli_start and not lent:
        cited = Script(script.path, case, "init=", "$1" if script is COPA else "$init-mnli")
        starts_from = ("mnli", cited if own else Ours(f"{BORROWED[task][1]}; the borrowed case does: {cited}"))
    how = f"{script.path}, case {case}" + (f" (lent: no {size_class} case)" if lent else "")
    if own is None:
        how = f"ours: {BORROWED[task][1]}, so {how}"
    return Recipe(task, size_class, f"{task} on {size_class}: {how}", settings, starts_from)


def _catalogue() -> dict[str, Recipe]:
    official_sizes = {"copa": [case.removesuffix("-mnli") for case in COPA.cases], "record": list(RECORD.cases)}
    found = {}
    for task in ("copa", "record", *BORROWED):
        for size_class in sorted({*SIZE_CLASSES, *official_sizes.get(task, [])}):
            made = recipe(task, size_class)
            if made is not None:
                found[f"{task}/{size_class}"] = made
    return found


CATALOGUE: dict[str, Recipe] = _catalogue()


def describe(name: str) -> str:
    found = CATALOGUE[name]
    width = max(map(len, found.settings))
    lines = [f"{name}: {found.description}"]
    lines += [f"  {key:<{width}} = {value!r:<10} {source}" for key, (value, source) in found.settings.items()]
    if found.starts_from:
        lines.append(f"  {'start':<{width}} = {found.starts_from[0]!r:<10} {found.starts_from[1]} "
                     "(an MNLI-finetuned model)")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m finetune.tasks.superglue_recipes [TASK|NAME ...]``: the recipes with their sources."""
    wanted = list(sys.argv[1:] if argv is None else argv)
    names = [name for name in CATALOGUE if not wanted or name in wanted or name.split("/")[0] in wanted]
    if not names:
        print(f"error: no recipe for {wanted}; tasks: {sorted({n.split('/')[0] for n in CATALOGUE})}",
              file=sys.stderr)
        return 2
    print("\n\n".join(describe(name) for name in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
