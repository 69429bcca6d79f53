"""Finetuning recipes: the official scripts' settings per task and model size (``--recipe``).

    python -m finetune.recipes            # every recipe, each value with its source
    python -m finetune.recipes rte        # the recipes of one task

A run picks its recipe by itself (``--recipe auto``, the default) from ``--task`` and the
size class of ``--model`` (its config against the shapes in ``deberta/presets.py``):
``base``, ``large``, ``xlarge`` (v1), ``xlarge-v2``, ``xxlarge-v2`` (v2),
``deberta-v3-xsmall``, ``-small``, ``-base``, ``-large`` (v3) — the case names of the
official scripts (microsoft/DeBERTa ``experiments/glue/*.sh``, ``experiments/ner/ner.sh``).
``--recipe NAME`` picks one by name (``mnli/base-sift``), ``--recipe none`` none. The
recipe's values are defaults: flags and ``--config`` win over them, and they win over the
DeepSpeed JSON and finetuning's own defaults (``deberta.cli``'s precedence).

Every value names its source: the flag of a script's case (``Script``), a default of the
official code (``Code``), or our choice with its reason (``Ours``). Where a script has no
case for a size (most tasks have no v3 xsmall/small/base case), the recipe takes the
script's ``base`` case and says so. A model smaller than every preset (the main job's
4-layer, 128-wide model) gets our small-model recipe, measured on SST-2 and RTE.

How the official flags read: ``--warmup N`` is argparse's abbreviation of
``--warmup_proportion``; a value of 1 or more counts steps (``xadam_factory`` divides it by
the total), below 1 a fraction. ``--train_batch_size`` is the global batch (the official
runner splits it over the GPUs without accumulation); ``--fp16`` is left to the DeepSpeed
JSON (precision is the hardware's choice). MRPC, RTE and STS-B on v1/v2 start from the
released MNLI model (``init=$init-mnli``): here ``--init_task_model DIR`` (an MNLI run's
``best/``); see ``start_from_task_model``.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from deberta import PRESETS, DebertaConfig
from pretrain.recipes import OPTIMIZER_OF_CODE, Code, Ours, Script, Source

EXAMPLE_PY = "DeBERTa/data/example.py"
RUN_PY = "DeBERTa/apps/run.py"
SMALL_MODEL = "small-model"


@dataclass(frozen=True)
class OfficialScript:
    """One official finetuning script: the flags its common command line sets, each case's
    parameter line (flags as written there), and the cases that start from the MNLI model."""
    path: str
    common: str
    cases: dict[str, str]
    mnli_start: tuple[str, ...] = ()


# The scripts' flag lines as they read (experiments/*/TASK.sh); tests/finetune/test_finetune_recipes.py
# compares every one with the mirrored official repository.
_V1V2 = ("base", "large", "xlarge", "xlarge-v2", "xxlarge-v2")
SCRIPTS: dict[str, OfficialScript] = {
    "mnli": OfficialScript("experiments/glue/mnli.sh", "--max_seq_len 256", {
        "deberta-v3-xsmall": "--num_train_epochs 3 --warmup 1000 --learning_rate 4.5e-5 --train_batch_size 64 "
                             "--cls_drop_out 0.10",
        "deberta-v3-xsmall-sift": "--num_train_epochs 10 --warmup 1500 --learning_rate 5e-5 --vat_lambda 3 "
                                  "--vat_learning_rate 1e-4 --vat_init_perturbation 1e-2 --train_batch_size 64 "
                                  "--cls_drop_out 0.10",
        "deberta-v3-small": "--num_train_epochs 3 --warmup 1500 --learning_rate 4.5e-5 --train_batch_size 64 "
                            "--cls_drop_out 0.20",
        "deberta-v3-small-sift": "--num_train_epochs 6 --vat_lambda 5 --vat_learning_rate 1e-4 "
                                 "--vat_init_perturbation 1e-2 --warmup 1000 --learning_rate 3.5e-5 "
                                 "--train_batch_size 64 --cls_drop_out 0.1",
        "deberta-v3-base": "--num_train_epochs 3 --warmup 1000 --learning_rate 1.5e-5 --train_batch_size 64 "
                           "--cls_drop_out 0.1",
        "deberta-v3-base-sift": "--num_train_epochs 6 --vat_lambda 5 --vat_learning_rate 1e-4 "
                                "--vat_init_perturbation 1e-2 --warmup 1000 --learning_rate 1.5e-5 "
                                "--train_batch_size 64 --cls_drop_out 0.1",
        "deberta-v3-large": "--num_train_epochs 2 --warmup 500 --learning_rate 7e-6 --train_batch_size 64 "
                            "--cls_drop_out 0.3",
        "base": "--num_train_epochs 3 --warmup 1000 --learning_rate 3e-5 --train_batch_size 64 --cls_drop_out 0.1",
        "base-sift": "--num_train_epochs 6 --vat_lambda 5 --vat_learning_rate 1e-4 --vat_init_perturbation 1e-2 "
                     "--warmup 1000 --learning_rate 1.5e-5 --train_batch_size 64 --cls_drop_out 0.1",
        "large": "--num_train_epochs 3 --warmup 1000 --learning_rate 1e-5 --train_batch_size 64 --cls_drop_out 0.2",
        "xlarge": "--num_train_epochs 3 --warmup 1000 --learning_rate 5e-6 --train_batch_size 64 --cls_drop_out 0.3",
        "xlarge-v2": "--num_train_epochs 3 --warmup 1000 --learning_rate 4e-6 --train_batch_size 64 "
                     "--cls_drop_out 0.25",
        "xxlarge-v2": "--num_train_epochs 3 --warmup 1000 --learning_rate 3e-6 --train_batch_size 64 "
                      "--cls_drop_out 0.3",
        "xxlarge-v2-sift": "--num_train_epochs 6 --warmup 1000 --vat_lambda 5 --vat_learning_rate 1e-4 "
                           "--vat_init_perturbation 1e-2 --learning_rate 3e-6 --train_batch_size 64 "
                           "--cls_drop_out 0.3",
    }),
    "cola": OfficialScript("experiments/glue/cola.sh", "--max_seq_len 64", {
        "base": "--num_train_epochs 6 --warmup 100 --learning_rate 2e-5 --train_batch_size 32 --cls_drop_out 0.15",
        "large": "--num_train_epochs 6 --warmup 100 --learning_rate 7e-6 --train_batch_size 32 --cls_drop_out 0.15",
        "xlarge": "--num_train_epochs 8 --warmup 100 --learning_rate 5e-6 --train_batch_size 32 --cls_drop_out 0.2",
        "xlarge-v2": "--num_train_epochs 8 --warmup 100 --learning_rate 3e-6 --train_batch_size 32 "
                     "--cls_drop_out 0.2",
        "xxlarge-v2": "--num_train_epochs 10 --warmup 100 --learning_rate 2.5e-6 --train_batch_size 32 "
                      "--cls_drop_out 0.2",
        "deberta-v3-large": "--num_train_epochs 10 --warmup 50 --learning_rate 5.5e-6 --train_batch_size 32 "
                            "--cls_drop_out 0.1",
    }),
    "sst-2": OfficialScript("experiments/glue/sst2.sh", "--max_seq_len 128", {
        "base": "--num_train_epochs 6 --warmup 500 --learning_rate 2e-5 --train_batch_size 32 --cls_drop_out 0.15",
        "large": "--num_train_epochs 6 --warmup 500 --learning_rate 1e-5 --train_batch_size 32 --cls_drop_out 0.15",
        "xlarge": "--num_train_epochs 6 --warmup 500 --learning_rate 3e-6 --train_batch_size 32 --cls_drop_out 0.2",
        "xlarge-v2": "--num_train_epochs 4 --warmup 500 --learning_rate 4e-6 --train_batch_size 32 "
                     "--cls_drop_out 0.2",
        "xxlarge-v2": "--num_train_epochs 4 --warmup 500 --learning_rate 3e-6 --train_batch_size 32 "
                      "--cls_drop_out 0.2",
        "deberta-v3-large": "--num_train_epochs 8 --warmup 500 --learning_rate 6e-6 --train_batch_size 32 "
                            "--cls_drop_out 0.1",
    }),
    "mrpc": OfficialScript("experiments/glue/mrpc.sh", "", {
        "base": "--num_train_epochs 6 --warmup 50 --learning_rate 2e-5 --train_batch_size 32 --cls_drop_out 0.15 "
                "--max_seq_len 128",
        "large": "--num_train_epochs 6 --warmup 50 --learning_rate 1e-5 --train_batch_size 32 --cls_drop_out 0.15 "
                 "--max_seq_len 128",
        "xlarge": "--num_train_epochs 8 --warmup 50 --learning_rate 7e-6 --train_batch_size 32 --cls_drop_out 0.3 "
                  "--max_seq_len 128",
        "xlarge-v2": "--num_train_epochs 6 --warmup 50 --learning_rate 3.5e-6 --train_batch_size 32 "
                     "--cls_drop_out 0.2 --max_seq_len 128",
        "xxlarge-v2": "--num_train_epochs 6 --warmup 50 --learning_rate 2e-6 --train_batch_size 32 "
                      "--cls_drop_out 0.2 --max_seq_len 128",
        "deberta-v3-large": "--num_train_epochs 6 --warmup 50 --learning_rate 6e-6 --train_batch_size 32 "
                            "--max_seq_len 128 --cls_drop_out 0.2",
    }, mnli_start=_V1V2),
    "rte": OfficialScript("experiments/glue/rte.sh", "", {
        "base": "--num_train_epochs 6 --warmup 100 --learning_rate 2e-5 --train_batch_size 32 --cls_drop_out 0.2 "
                "--max_seq_len 320",
        "large": "--num_train_epochs 6 --warmup 50 --learning_rate 1e-5 --train_batch_size 32 --cls_drop_out 0.2 "
                 "--max_seq_len 320",
        "xlarge": "--num_train_epochs 6 --warmup 50 --learning_rate 5e-6 --train_batch_size 48 --cls_drop_out 0.2 "
                  "--max_seq_len 320",
        "xlarge-v2": "--num_train_epochs 6 --warmup 50 --learning_rate 4e-6 --train_batch_size 48 "
                     "--cls_drop_out 0.2 --max_seq_len 320",
        "xxlarge-v2": "--num_train_epochs 6 --warmup 50 --learning_rate 3e-6 --train_batch_size 48 "
                      "--cls_drop_out 0.2 --max_seq_len 320",
        "deberta-v3-large": "--num_train_epochs 6 --warmup 50 --learning_rate 1e-5 --train_batch_size 32 "
                            "--max_seq_len 320 --cls_drop_out 0.3",
    }, mnli_start=_V1V2),
    "sts-b": OfficialScript("experiments/glue/stsb.sh", "--max_seq_len 128", {
        "base": "--num_train_epochs 6 --warmup 100 --learning_rate 2e-5 --train_batch_size 32 --cls_drop_out 0.15",
        "large": "--num_train_epochs 4 --warmup 100 --learning_rate 7e-6 --train_batch_size 32 --cls_drop_out 0.15",
        "xlarge": "--num_train_epochs 4 --warmup 100 --learning_rate 7e-6 --train_batch_size 32 --cls_drop_out 0.2",
        "xlarge-v2": "--num_train_epochs 4 --warmup 100 --learning_rate 4e-6 --train_batch_size 32 "
                     "--cls_drop_out 0.2",
        "xxlarge-v2": "--num_train_epochs 4 --warmup 100 --learning_rate 3e-6 --train_batch_size 32 "
                      "--cls_drop_out 0.2",
        "deberta-v3-large": "--num_train_epochs 4 --warmup 50 --learning_rate 7e-6 --train_batch_size 32 "
                            "--cls_drop_out 0.1",
    }, mnli_start=_V1V2),
    "qqp": OfficialScript("experiments/glue/qqp.sh", "--max_seq_len 320", {
        "base": "--num_train_epochs 8 --warmup 500 --learning_rate 2e-5 --train_batch_size 64 --cls_drop_out 0.15",
        "large": "--num_train_epochs 8 --warmup 500 --learning_rate 1e-5 --train_batch_size 64 --cls_drop_out 0.15",
        "xlarge": "--num_train_epochs 8 --warmup 500 --learning_rate 7e-6 --train_batch_size 64 --cls_drop_out 0.2",
        "xlarge-v2": "--num_train_epochs 10 --warmup 1000 --learning_rate 4e-6 --train_batch_size 64 "
                     "--cls_drop_out 0.2",
        "xxlarge-v2": "--num_train_epochs 10 --warmup 1000 --learning_rate 3e-6 --train_batch_size 64 "
                      "--cls_drop_out 0.2",
        "deberta-v3-large": "--num_train_epochs 6 --warmup 1000 --learning_rate 1e-5 --train_batch_size 64 "
                            "--cls_drop_out 0.2",
    }),
    "qnli": OfficialScript("experiments/glue/qnli.sh", "", {
        "base": "--num_train_epochs 4 --warmup 500 --learning_rate 2e-5 --train_batch_size 32 --cls_drop_out 0.15 "
                "--max_seq_len 512",
        "large": "--num_train_epochs 4 --warmup 500 --learning_rate 1e-5 --train_batch_size 32 --cls_drop_out 0.15 "
                 "--max_seq_len 512",
        "xlarge": "--num_train_epochs 4 --warmup 500 --learning_rate 7e-6 --train_batch_size 32 --cls_drop_out 0.2 "
                  "--max_seq_len 512",
        "xlarge-v2": "--num_train_epochs 4 --warmup 500 --learning_rate 4e-6 --train_batch_size 64 "
                     "--cls_drop_out 0.2 --max_seq_len 512",
        "xxlarge-v2": "--num_train_epochs 4 --warmup 500 --learning_rate 3e-6 --train_batch_size 64 "
                      "--cls_drop_out 0.2 --max_seq_len 512",
        "deberta-v3-large": "--num_train_epochs 6 --warmup 200 --learning_rate 7e-6 --train_batch_size 64 "
                            "--max_seq_len 512 --cls_drop_out 0.2",
    }),
    "ner": OfficialScript("experiments/ner/ner.sh", "--max_seq_len 512", {
        "base": "--num_train_epochs 15 --warmup 0.1 --learning_rate 2e-5 --train_batch_size 16 --cls_drop_out 0",
        "large": "--num_train_epochs 15 --warmup 0.1 --learning_rate 1e-5 --train_batch_size 16 --cls_drop_out 0",
        "xlarge": "--num_train_epochs 15 --warmup 0.1 --learning_rate 7e-6 --train_batch_size 16 --cls_drop_out 0",
        "xlarge-v2": "--num_train_epochs 15 --warmup 0.1 --learning_rate 4e-6 --train_batch_size 16 "
                     "--cls_drop_out 0",
        "xxlarge-v2": "--num_train_epochs 15 --warmup 0.1 --learning_rate 2.5e-6 --train_batch_size 16 "
                      "--cls_drop_out 0",
        "deberta-v3-large": "--num_train_epochs 10 --warmup 10 --learning_rate 9e-6 --train_batch_size 16 "
                            "--cls_drop_out 0",
    }),
}

# Size classes: a preset of deberta/presets.py -> the case name of the official scripts.
SIZE_CLASSES = {
    "deberta-base": "base", "deberta-large": "large", "deberta-xlarge": "xlarge",
    "deberta-v2-xlarge": "xlarge-v2", "deberta-v2-xxlarge": "xxlarge-v2",
    "deberta-v3-xsmall": "deberta-v3-xsmall", "deberta-v3-small": "deberta-v3-small",
    "deberta-v3-base": "deberta-v3-base", "deberta-v3-large": "deberta-v3-large",
    "mdeberta-v3-base": "deberta-v3-base",
}

# What the official runner does when a script sets nothing (DeBERTa/optims/args.py, run.py):
# these hold in every script-based recipe.
_OFFICIAL_CODE_DEFAULTS = dict(
    **OPTIMIZER_OF_CODE,
    pair_truncation=("official", Code(EXAMPLE_PY, "def _truncate_segments(segments, max_num_tokens, rng):",
                                      "the longest segment loses its first or last token at random")),
)
_SIFT_OFF = (False, Code(RUN_PY, "parser.add_argument('--vat_lambda', default=0,", "no SiFT unless a case sets it"))


@dataclass(frozen=True)
class Recipe:
    """Flag values with their sources; ``starts_from``: the task whose finetuned model the
    official run starts from (MNLI for MRPC, RTE and STS-B on v1/v2), with its source."""
    task: str
    size_class: str
    description: str
    settings: dict  # flag name -> (value, Source)
    starts_from: Optional[tuple[str, Source]] = None

    @property
    def values(self) -> dict[str, Any]:
        return {name: value for name, (value, _) in self.settings.items()}

    @property
    def sources(self) -> dict[str, Source]:
        return {name: source for name, (_, source) in self.settings.items()}

    def record(self, applied: dict[str, Any]) -> dict:
        """What finetune_config.json keeps: each value, its source, and whether it held
        (``applied``: the run's final values; a flag or --config may have replaced it)."""
        return {"description": self.description,
                "starts_from": self.starts_from[0] if self.starts_from else None,
                "settings": {name: {"value": value, "source": str(source), "applied": applied.get(name) == value}
                             for name, (value, source) in self.settings.items()}}


def _read_flags(text: str) -> list[tuple[str, str]]:
    words = text.split()
    return [(words[i], words[i + 1]) for i in range(0, len(words), 2)]


def _field_values(flag: str, text: str) -> dict[str, Any]:
    """An official flag's value as our settings."""
    if flag == "--warmup":  # --warmup_proportion: >= 1 counts steps, below 1 a fraction
        value = float(text)
        return {"warmup_steps": int(value)} if value >= 1 else {"warmup_ratio": value, "warmup_steps": 0}
    if flag == "--vat_lambda":
        return {"sift": True, "sift_lambda": float(text)}
    fields = {"--learning_rate": ("lr", float), "--num_train_epochs": ("epochs", float),
              "--train_batch_size": ("global_batch_size", int), "--cls_drop_out": ("cls_dropout", float),
              "--max_seq_len": ("max_seq_length", int), "--vat_learning_rate": ("sift_step_size", float),
              "--vat_init_perturbation": ("sift_init_noise", float)}
    name, kind = fields[flag]
    return {name: kind(text)}


def _script_recipe(task: str, size_class: str, case: str) -> Recipe:
    """``case`` of the task's script as the recipe of ``size_class`` (a different case: the
    script has none for this size, and every source says so)."""
    script = SCRIPTS[task]
    borrowed = case != size_class

    def source(flag: str, text: str, in_case: Optional[str]) -> Source:
        cited = Script(script.path, in_case, flag, text)
        if not borrowed:
            return cited
        return Ours(f"{script.path} has no {size_class} case; the value of its {case} case: {cited}")

    settings: dict[str, tuple[Any, Source]] = {}
    for line, in_case in ((script.cases[case], case), (script.common, None)):
        for flag, text in _read_flags(line):
            for name, value in _field_values(flag, text).items():
                settings[name] = (value, source(flag, text, in_case))
    settings = {**settings, **{k: v for k, v in {**_OFFICIAL_CODE_DEFAULTS, "sift": _SIFT_OFF}.items()
                               if k not in settings}}
    starts_from = None
    if case in script.mnli_start and not borrowed:  # v3 cases never start from MNLI
        starts_from = ("mnli", Script(script.path, case, "init=", "$init-mnli" if task == "rte" else "${init}-mnli"))
    described = f"{script.path}, case {case}" + (f" (no {size_class} case there)" if borrowed else "")
    sift = f"; SiFT lambda {settings['sift_lambda'][0]:g}" if settings["sift"][0] else ""
    start = "; starts from an MNLI-finetuned model (--init_task_model)" if starts_from else ""
    return Recipe(task, size_class, f"{task} on {size_class} as {described}{sift}{start}", settings, starts_from)


def _small_model_recipes() -> dict[str, Recipe]:
    """Ours, for models below the smallest preset (the main job's 4 x 128 model), chosen
    to fit a CPU budget and measured with docs/benchmarks.md's figures."""
    why = "measured on the main job's 4-layer, 128-wide model (docs/benchmarks.md)"
    sst2 = Recipe("sst-2", SMALL_MODEL, "sst-2 on a model smaller than every preset: ours, half an epoch at a "
                  "high learning rate (a CPU budget: about 15 minutes on one core)", dict(
                      lr=(5e-4, Ours(f"a small model needs a large rate (2e-5 stays at the majority class); {why}")),
                      epochs=(0.5, Ours("a CPU budget: half of SST-2's 60K sentences (drawn from all of them) "
                                        f"reach the README's figure; {why}")),
                      max_seq_length=(64, Ours("SST-2's sentences are short: 64 tokens truncate 17 of the 6735 "
                                               "dev sentences")),
                      global_batch_size=(32, Ours("the official SST-2 batch (experiments/glue/sst2.sh)")),
                      warmup_steps=(0, Ours("a fraction of the run instead, below")),
                      warmup_ratio=(0.06, Ours(f"6 % of the steps; {why}")),
                      sift=(False, Ours("SiFT doubles the cost of a step")),
                  ))
    rte = Recipe("rte", SMALL_MODEL, "rte on a model smaller than every preset: ours, 3 epochs of 128 tokens at "
                 "a small model's learning rate (a CPU budget: about 10 minutes on one core)", dict(
                     lr=(5e-4, Ours(f"the small model's rate on SST-2; {why}")),
                     epochs=(3.0, Ours("a CPU budget: half the official 6 epochs (experiments/glue/rte.sh)")),
                     max_seq_length=(128, Ours("a CPU budget: 128 tokens truncate 2 % of the training pairs "
                                               "(the official 320 none)")),
                     global_batch_size=(32, Ours("the official RTE batch of base and large (experiments/glue/rte.sh)")),
                     warmup_steps=(0, Ours("a fraction of the run instead, below")),
                     warmup_ratio=(0.06, Ours(f"6 % of the steps, as for SST-2; {why}")),
                     sift=(False, Ours("SiFT doubles the cost of a step")),
                 ))
    return {"sst-2": sst2, "rte": rte}


def _catalogue() -> dict[str, Recipe]:
    recipes: dict[str, Recipe] = {}
    size_classes = sorted(set(SIZE_CLASSES.values()))
    for task, script in SCRIPTS.items():
        for case in script.cases:
            recipes[f"{task}/{case}"] = _script_recipe(task, case, case)
        for size_class in size_classes:  # sizes the script has no case for: its base case
            recipes.setdefault(f"{task}/{size_class}", _script_recipe(task, size_class, "base"))
    for task, recipe in _small_model_recipes().items():
        recipes[f"{task}/{SMALL_MODEL}"] = recipe
    # SuperGLUE, XNLI and ANLI: COPA's and ReCoRD's scripts, the others a GLUE task's recipes (marked ours).
    from .tasks.superglue_recipes import benchmark_recipes
    runner_defaults = {**_OFFICIAL_CODE_DEFAULTS, "sift": _SIFT_OFF}
    for name, fields in benchmark_recipes(dict(recipes), size_classes, runner_defaults).items():
        recipes[name] = Recipe(**fields)
    return recipes


CATALOGUE: dict[str, Recipe] = _catalogue()
RECIPES: dict[str, dict] = {name: recipe.values for name, recipe in CATALOGUE.items()}
AUTO, NONE = "auto", "none"


# --- choosing a recipe -------------------------------------------------------------------

def _backbone_size(config) -> float:
    """Weights of the layers (12 hidden^2 per layer): what sets a model's learning rate."""
    return 12.0 * config.num_hidden_layers * config.hidden_size ** 2


def size_class(config: DebertaConfig) -> tuple[str, str]:
    """(size class, how it was found) of a model config: the preset of its family (v1, v2 or
    v3) with its depth and width, else the nearest in size; below every preset, ours."""
    presets = [(name, DebertaConfig.from_preset(name)) for name in SIZE_CLASSES]
    family = [(name, preset) for name, preset in presets if preset.model_type == config.model_type
              and (preset.conv_kernel_size > 0) == (config.conv_kernel_size > 0)] or presets
    shape = f"{config.num_hidden_layers} layers, width {config.hidden_size}"
    for name, preset in family:
        if (preset.hidden_size, preset.num_hidden_layers) == (config.hidden_size, config.num_hidden_layers):
            return SIZE_CLASSES[name], f"{shape}, the shape of {name}"
    smallest_name, smallest = min(presets, key=lambda item: _backbone_size(item[1]))
    if _backbone_size(config) < _backbone_size(smallest):
        return SMALL_MODEL, (f"{shape}: smaller than every preset (the smallest, {smallest_name}, has "
                             f"{smallest.num_hidden_layers} layers of width {smallest.hidden_size})")
    name, _ = min(family, key=lambda item: abs(math.log(_backbone_size(item[1]) / _backbone_size(config))))
    return SIZE_CLASSES[name], f"{shape}: no preset has it; the nearest in size is {name}"


def choose(requested: str, task: Optional[str], model: Optional[str]) -> tuple[Optional[str], str]:
    """(recipe name or None, why) for ``--recipe requested`` with ``--task`` and ``--model``."""
    if requested == NONE:
        return None, "--recipe none"
    if requested != AUTO:
        if requested not in CATALOGUE:
            raise ValueError(f"--recipe {requested!r} is not a recipe; python -m finetune.recipes lists them")
        return requested, f"--recipe {requested}"
    if not task or not model:
        return None, "no --task or --model to choose a recipe from"
    from deberta.checkpoint import read_config
    try:
        config, _ = read_config(model)
    except Exception:  # noqa: BLE001 - the run itself reports an unreadable model folder
        return None, f"{model}: no readable model config to choose a recipe from"
    found, how = size_class(config)
    name = f"{task.lower()}/{found}"
    if name not in CATALOGUE:
        return None, f"no recipe for task {task!r} on a {found} model ({how}): finetuning's defaults"
    return name, f"--task {task.lower()} on {model}: {how}"


# --- the MNLI start of MRPC, RTE and STS-B --------------------------------------------------

def start_from_task_model(model, folder: str) -> str:
    """Load the weights of a model finetuned on another task into ``model`` (built from
    ``--model`` with this task's head); returns what was kept, for the log.

    As the official loader (``NNModule.load_model`` copies every tensor whose shape fits
    and skips the rest), the backbone and the pooler come from ``folder``; the classifier
    too when its shape fits this task (MNLI's 3 labels do not fit MRPC's or RTE's 2, nor
    STS-B's single regression output: a new classifier then). The architectures must match.
    """
    from deberta.checkpoint import CheckpointError, read_folder
    _, head, state = read_folder(folder)
    if head != model.head:
        raise CheckpointError(f"--init_task_model {folder}: a {head} model; this task needs a {model.head} model "
                              "(finetuned on another task, e.g. the best/ folder of an MNLI run)")
    own = model.state_dict()
    head_names = [name for name in own if not name.startswith(("deberta.", "pooler."))]
    absent = [name for name in own if name not in state and name not in head_names]
    misfit = [name for name in own if name in state and name not in head_names and state[name].shape != own[name].shape]
    if absent or misfit:
        raise CheckpointError(f"--init_task_model {folder}: not the architecture of --model (missing: {absent[:5]}, "
                              f"other shapes: {misfit[:5]})")
    kept = {name: tensor for name, tensor in state.items() if name in own and tensor.shape == own[name].shape}
    model.load_state_dict(kept, strict=False)
    replaced = [name for name in head_names if name not in kept]
    task = _finetuned_task(folder)
    return (f"weights from --init_task_model {folder}" + (f" (finetuned on {task})" if task else "") +
            ": backbone and pooler kept; " + (f"new {', '.join(replaced)} (shapes differ from {folder}'s)"
                                              if replaced else "classifier kept (same shape)"))


def _finetuned_task(folder: str) -> Optional[str]:
    import json
    try:
        values = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return (values.get("finetune") or {}).get("task") if isinstance(values, dict) else None


# --- the listing ---------------------------------------------------------------------------

def describe(name: str) -> str:
    recipe = CATALOGUE[name]
    lines = [f"{name}: {recipe.description}"]
    width = max(map(len, recipe.settings))
    lines += [f"  {key:<{width}} = {value!r:<10} {source}" for key, (value, source) in recipe.settings.items()]
    if recipe.starts_from:
        lines.append(f"  {'start':<{width}} = {recipe.starts_from[0]!r:<10} {recipe.starts_from[1]} "
                     "(give --init_task_model DIR)")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    wanted = list(sys.argv[1:] if argv is None else argv)
    names = [name for name in CATALOGUE if not wanted or name in wanted or name.split("/")[0] in wanted]
    if not names:
        print(f"error: no recipe for {wanted}; tasks with recipes: {sorted(SCRIPTS)}", file=sys.stderr)
        return 2
    print("\n\n".join(describe(name) for name in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
