"""Recipes for the SuperGLUE, XNLI and ANLI tasks, every value with its source; part of
``--recipe`` (finetune/recipes.py adds them to its catalogue: ``python -m finetune.recipes
copa`` lists them).

Official scripts exist for two of these tasks: COPA (``experiments/superglue/copa.sh``,
whose cases are named after the released MNLI models they start from: ``base-mnli``, ...)
and ReCoRD (``experiments/superglue/record.sh``). A size class without a case there takes
the script's base case and says so. Every other task takes the recipes of the official
GLUE script of the most similar task, each value marked as our choice and naming the
script line it came from: RTE's for SuperGLUE RTE (the same data) and its diagnostics,
CB and WSC (small pair sets); QNLI's for BoolQ and MultiRC (question / passage pairs, 512
tokens); MRPC's for WiC (short sentence pairs); MNLI's for XNLI (which trains on MNLI)
and ANLI. (``experiments/my_exp/run_anli.sh`` is not ANLI: it runs AlphaNLI, abductive
NLI.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pretrain.recipes import Code, Ours, Script, Source


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
_FIELDS = {"--learning_rate": ("lr", float), "--num_train_epochs": ("epochs", float),
           "--train_batch_size": ("global_batch_size", int), "--cls_drop_out": ("cls_dropout", float),
           "--max_seq_len": ("max_seq_length", int), "--accumulative_update": ("grad_accum", int)}


def _values(flag: str, text: str) -> dict[str, Any]:
    if flag == "--warmup":  # --warmup_proportion: 1 or more counts steps, below 1 a fraction
        value = float(text)
        return {"warmup_steps": int(value)} if value >= 1 else {"warmup_ratio": value, "warmup_steps": 0}
    name, kind = _FIELDS[flag]
    return {name: kind(text)}


def _script_recipe(task: str, script: ScriptCases, size_class: str, runner_defaults: dict) -> dict:
    """The fields of a recipe from ``script``'s case for ``size_class`` (or its base case)."""
    suffix = "-mnli" if script is COPA else ""
    case = f"{size_class}{suffix}"
    lent = case not in script.cases
    if lent:
        case = f"base{suffix}"
    settings: dict[str, tuple[Any, Source]] = {}
    for line, in_case in ((script.cases[case], case), (script.common, None)):
        words = line.split()
        for flag, text in zip(words[::2], words[1::2]):
            cited: Source = Script(script.path, in_case, flag, text)
            if lent:
                cited = Ours(f"{script.path} has no {size_class} case; the value of its {case} case: {cited}")
            settings.update({name: (value, cited) for name, value in _values(flag, text).items()})
    settings.update({k: v for k, v in runner_defaults.items() if k not in settings})
    starts_from = None
    if case in script.mnli_start and not lent:  # the case names the MNLI model it loads: init=$1
        starts_from = ("mnli", Script(script.path, None, "init=", "$1"))
    described = f"{script.path}, case {case}" + (f" (no {size_class} case there)" if lent else "")
    start = "; starts from an MNLI-finetuned model (--init_task_model)" if starts_from else ""
    return dict(task=task, size_class=size_class, description=f"{task} on {size_class} as {described}{start}",
                settings=settings, starts_from=starts_from)


def _borrowed(task: str, why: str, recipe) -> dict:
    """A GLUE task's recipe as ``task``'s: the same values, each source marked as our choice
    (the official runner's own defaults stay cited as they are)."""
    def ours(source: Source) -> Source:
        return source if isinstance(source, Code) else Ours(f"{task} has no official script; {why}: {source}")

    settings = {name: (value, ours(source)) for name, (value, source) in recipe.settings.items()}
    starts_from = (recipe.starts_from[0], ours(recipe.starts_from[1])) if recipe.starts_from else None
    return dict(task=task, size_class=recipe.size_class, settings=settings, starts_from=starts_from,
                description=f"{task} on {recipe.size_class}: ours ({why}), the recipe {recipe.description}")


def benchmark_recipes(glue: dict, size_classes: list[str], runner_defaults: dict) -> dict[str, dict]:
    """Recipe fields by name (``task/size class``) for finetune/recipes.py's catalogue.

    ``glue``: its recipes of the GLUE tasks by name; ``size_classes``: every size class;
    ``runner_defaults``: what the official runner does when a script sets nothing (flag ->
    (value, source)), which holds in the COPA and ReCoRD recipes as in the GLUE ones."""
    found = {}
    for task, script in (("copa", COPA), ("record", RECORD)):
        for size_class in size_classes:
            found[f"{task}/{size_class}"] = _script_recipe(task, script, size_class, runner_defaults)
    for task, (glue_task, why) in BORROWED.items():
        for name, recipe in glue.items():
            if recipe.task == glue_task:
                found[f"{task}/{name.split('/', 1)[1]}"] = _borrowed(task, why, recipe)
    return found
