"""Published pretraining recipes as flag defaults (``--recipe NAME``; any flag overrides).

Every value of every recipe carries its source: a flag line of an official script, a
default of the official code, a passage or table of a paper, or ``Ours`` (our choice,
with the reason). ``python -m pretrain.recipes [NAME]`` prints them;
tests/pretrain/test_recipes.py checks the script-sourced values against the mirrored
official repository. docs/official_comparison.md compares the recipes with the official
code point by point.

Two kinds of recipe, and both are offered where they differ:

* ``paper``: the production runs. DeBERTa (He et al., ICLR 2021), appendix Table 8
  ("Hyper-parameters for pre-training DeBERTa"): 1.5B model lr 1.5e-4, base and large
  2e-4; batch 2K; 1M steps; 10K warm-up; Adam beta2 0.999, eps 1e-6; weight decay 0.01;
  clipping 1.0; section A.3: span masking up to three words. The v3 models are that
  paper's DeBERTa_RTD (appendix A.11, which the released v3 model cards point to): a
  generator as wide as the discriminator at half its depth, "other hyper-parameters
  remain the same as DeBERTa_base or DeBERTa_large"; the DeBERTaV3 paper (ICLR 2023)
  says it pre-trains "using the same settings as DeBERTa" and sets the RTD weight
  lambda = 50. Neither text that we could read pairs the v3 models with an 8K batch or
  500K steps (RoBERTa's setting); recipes built that way are not offered.
* ``script``: the official demonstration scripts, experiments/language_model/rtd.sh and
  mlm.sh (wikitext-103, global batch 32-256, 1M steps from their common command line;
  the ``*-continue`` cases 100K steps).

The official optimizer (DeBERTa/optims/xadam.py) has no Adam bias correction; every
recipe reproduces that with ``adam_bias_correction false`` (a flag of ours; torch's AdamW
always corrects). lambda: the paper's 50 everywhere; the official code's default is 10
(rtd_task.py ``--rtd_lambda`` default=10) and rtd.sh does not set it.

The v3 recipes train decoupled (``decoupled_training``, the discriminator at the
generator's learning rate), as every official rtd.sh case. The ``*-continue`` recipes need
the released weights (``--init_model``, ``--init_generator``), which they leave to the user.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

OFFICIAL_REPO = "microsoft/DeBERTa"
RTD_SH = "experiments/language_model/rtd.sh"
MLM_SH = "experiments/language_model/mlm.sh"
ARGS_PY = "DeBERTa/optims/args.py"
XADAM_PY = "DeBERTa/optims/xadam.py"
MLM_TASK = "DeBERTa/apps/tasks/mlm_task.py"
RTD_TASK = "DeBERTa/apps/tasks/rtd_task.py"

DEBERTA = "DeBERTa (He et al., ICLR 2021)"
DEBERTA_V3 = "DeBERTaV3 (He et al., ICLR 2023)"
TABLE8 = "appendix Table 8 (Hyper-parameters for pre-training DeBERTa)"
A11 = "appendix A.11: DeBERTa_RTD keeps the other hyper-parameters of DeBERTa_base / DeBERTa_large"


@dataclass(frozen=True)
class Script:
    """The flag line ``flag text`` of an official script, in its ``case`` block (None: the
    command line every case runs)."""
    path: str
    case: Optional[str]
    flag: str
    text: str

    @property
    def line(self) -> str:
        return self.flag + self.text if self.flag.endswith("=") else f"{self.flag} {self.text}"

    def __str__(self) -> str:
        where = f"case {self.case}" if self.case else "common command"
        return f"{OFFICIAL_REPO} {self.path} ({where}): {self.line}"


@dataclass(frozen=True)
class Code:
    """A default of the official code: ``text`` occurs in ``path`` (runs of white space read as one)."""
    path: str
    text: str
    meaning: str = ""

    def __str__(self) -> str:
        return f"{OFFICIAL_REPO} {self.path}: {self.text!r}" + (f" ({self.meaning})" if self.meaning else "")


@dataclass(frozen=True)
class Paper:
    paper: str
    where: str
    says: str

    def __str__(self) -> str:
        return f"{self.paper}, {self.where}: {self.says}"


@dataclass(frozen=True)
class Ours:
    """Our choice (no source says it); ``why`` says what it rests on."""
    why: str

    def __str__(self) -> str:
        return f"our choice: {self.why}"


Source = Union[Script, Code, Paper, Ours]
PAPER, SCRIPT = "paper", "script"


@dataclass(frozen=True)
class Recipe:
    description: str
    follows: str  # PAPER or SCRIPT
    settings: dict  # flag name -> (value, Source)

    @property
    def values(self) -> dict[str, Any]:
        return {name: value for name, (value, _) in self.settings.items()}

    @property
    def sources(self) -> dict[str, Source]:
        return {name: source for name, (_, source) in self.settings.items()}


# --- settings shared by several recipes -----------------------------------------------

def _optimizer_of_paper() -> dict:
    """Table 8's rows that are the same in every column, and the authors' optimizer."""
    row = lambda says: Paper(DEBERTA, f"{TABLE8}, every column", says)  # noqa: E731
    return dict(
        adam_beta1=(0.9, row("Adam beta1 0.9")),
        adam_beta2=(0.999, row("Adam beta2 0.999")),
        adam_eps=(1e-6, row("Adam epsilon 1e-6")),
        weight_decay=(0.01, row("Weight Decay 0.01")),
        clip_grad=(1.0, row("Gradient Clipping 1.0")),
        warmup_steps=(10_000, row("Warmup Steps 10k")),
        adam_bias_correction=(False, Code(XADAM_PY, "0, #bias_correction",
                                          "XAdam.update_param calls adamw() without bias correction")),
    )


# The official scripts set none of these: the code's defaults apply (finetuning's recipes too).
OPTIMIZER_OF_CODE = dict(
    adam_beta1=(0.9, Code(ARGS_PY, '"--adam_beta1", default=0.9')),
    adam_beta2=(0.999, Code(ARGS_PY, '"--adam_beta2", default=0.999')),
    adam_eps=(1e-6, Code(ARGS_PY, '"--epsilon", default=1e-6')),
    weight_decay=(0.01, Code(ARGS_PY, "'--weight_decay', type=float, default=0.01")),
    clip_grad=(1.0, Code(ARGS_PY, '"--max_grad_norm", default=1,')),
    adam_bias_correction=(False, Code(XADAM_PY, "0, #bias_correction",
                                      "XAdam.update_param calls adamw() without bias correction")),
)

_LAMBDA = (50.0, Paper(DEBERTA_V3, "section DeBERTa with RTD", "lambda = 50; the official code's default is 10 "
                       "(rtd_task.py --rtd_lambda default=10) and rtd.sh does not set it"))
_DECOUPLED = dict(  # the official v3 loop: two optimizers, the discriminator at the generator's lr
    decoupled_training=(True, Code(RTD_TASK, "'--decoupled_training', type=boolean_string, default=True",
                                   "and every rtd.sh case passes --decoupled_training True")),
    discriminator_lr=(0.0, Code(RTD_TASK, "'--discriminator_learning_rate', type=float, default=-1",
                                "not > 0, so the discriminator takes --learning_rate (ours: 0 = --lr); "
                                "rtd.sh does not set it")),
)
_GDES = ("gdes", Paper(DEBERTA_V3, "section Gradient-Disentangled Embedding Sharing",
                       "gradient-disentangled embedding sharing, the v3 method"))
_RTD_MASK = dict(  # the official RTD task's masker: NGramMaskGenerator(max_gram=1, keep_prob=0, mask_prob=1)
    mask_prob=(0.15, Code(MLM_TASK, "mask_lm_prob=0.15", "NGramMaskGenerator's default target rate")),
    max_ngram=(1, Code(RTD_TASK, "max_gram=1", "RTDTask's masker: single subwords")),
    replace_with_mask=(1.0, Code(RTD_TASK, "keep_prob = 0, mask_prob = 1", "every RTD target becomes [MASK]")),
    replace_with_random=(0.0, Code(RTD_TASK, "keep_prob = 0, mask_prob = 1", "no random or kept token")),
)
_MLM_MASK = dict(  # the official MLM task's masker: NGramMaskGenerator defaults, max_ngram from the script
    mask_prob=(0.15, Code(MLM_TASK, "mask_lm_prob=0.15", "NGramMaskGenerator's default target rate")),
    replace_with_mask=(0.8, Code(MLM_TASK, "keep_prob = 0.1, mask_prob=0.8", "80 % [MASK]")),
    replace_with_random=(0.1, Code(MLM_TASK, "keep_prob = 0.1, mask_prob=0.8",
                                   "10 % kept, so the remaining 10 % random")),
)


# --- the recipes -----------------------------------------------------------------------

def _v2_mlm_paper(size: str, preset: str) -> Recipe:
    column = "DeBERTa_1.5B"
    if size == "xxlarge":
        lr = (1.5e-4, Paper(DEBERTA, f"{TABLE8}, {column} column", "Learning Rates 1.5e-4"))
        batch = (2048, Paper(DEBERTA, f"{TABLE8}, {column} column", "Batch Size 2k"))
        steps = (1_000_000, Paper(DEBERTA, f"{TABLE8}, {column} column", "Max Steps 1M"))
        model = (preset, Paper(DEBERTA, f"{TABLE8}, {column} column", "48 layers, hidden 1536, FFN 6144, 24 heads"))
        note = "Table 8's DeBERTa_1.5B column"
    else:
        why = "Table 8 has no column for the 900M model (DeBERTa_900M, Table 12); the 1.5B column's value"
        lr, batch, steps = (1.5e-4, Ours(why)), (2048, Ours(why)), (1_000_000, Ours(why))
        model = (preset, Code("experiments/language_model/deberta_xlarge.json", "\"num_hidden_layers\": 24",
                              "24 layers, hidden 1536"))
        note = "Table 8's DeBERTa_1.5B column (the paper gives no column for the 900M model)"
    return Recipe(
        f"DeBERTa-v2 {size} MLM as in the paper ({note}); spans of up to 3 whole words",
        PAPER,
        dict(objective=("mlm", Paper(DEBERTA, "section Enhanced Mask Decoder",
                                     "MLM through the enhanced mask decoder")),
             model_config=model, lr=lr, global_batch_size=batch, max_steps=steps, **_optimizer_of_paper(),
             max_ngram=(3, Paper(DEBERTA, "appendix A.3", "span masking with the span size up to three")),
             **_MLM_MASK))


def _v2_mlm_script(size: str, preset: str, case: str) -> Recipe:
    flag = lambda name, text: Script(MLM_SH, case, name, text)  # noqa: E731
    return Recipe(
        f"DeBERTa-v2 {size} MLM as the official demonstration script runs it (mlm.sh {case}: "
        "wikitext-103, batch 32, 1K warm-up, lr 1e-4, 3-grams)",
        SCRIPT,
        dict(objective=("mlm", Script(MLM_SH, None, "Task=", "MLM")),
             model_config=(preset, flag("--model_config", f"deberta_{size}.json")),
             lr=(1e-4, flag("--learning_rate", "1e-4")),
             global_batch_size=(32, flag("--train_batch_size", "32")),
             warmup_steps=(1000, flag("--warmup", "1000")),
             max_steps=(1_000_000, Script(MLM_SH, None, "--num_training_steps", "1000000")),
             max_ngram=(3, flag("--max_ngram", "3")),
             **OPTIMIZER_OF_CODE, **_MLM_MASK))


def _v3_paper(size: str) -> Recipe:
    column = "DeBERTa_large" if size == "large" else "DeBERTa_base"
    table = f"{TABLE8}, {column} column"
    lr = (2e-4, Paper(DEBERTA, f"{A11}; {table}", "Learning Rates 2e-4"))
    batch = (2048, Paper(DEBERTA, f"{A11}; {table}", "Batch Size 2k"))
    steps = (1_000_000, Paper(DEBERTA, f"{A11}; {table}", "Max Steps 1M"))
    if size == "xsmall":  # not in the 2021 paper: the base column, as for small
        why = "the xsmall model is not in the DeBERTa paper; the base column's value, as the paper does for small"
        lr, batch, steps = (2e-4, Ours(why)), (2048, Ours(why)), (1_000_000, Ours(why))
        model = (f"deberta-v3-{size}", Code("experiments/language_model/rtd_xsmall.json", "\"hidden_size\": 384",
                                            "12 layers, hidden 384"))
    elif size == "small":
        model = (f"deberta-v3-{size}", Paper(DEBERTA, "appendix A.11", "DeBERTa_RTD_small: 6 layers, the base width"))
    else:
        model = (f"deberta-v3-{size}", Paper(DEBERTA, f"{TABLE8}, {column} column", "layers, hidden size, heads"))
    return Recipe(
        f"DeBERTa-v3 {size} RTD as in the papers (DeBERTa appendix A.11 with Table 8's {column} column: "
        "batch 2K, 1M steps, lr 2e-4; lambda 50 from DeBERTaV3)",
        PAPER,
        dict(objective=("rtd", Paper(DEBERTA_V3, "section DeBERTa with RTD", "replaced token detection")),
             model_config=model, lr=lr, global_batch_size=batch, max_steps=steps, **_optimizer_of_paper(),
             rtd_lambda=_LAMBDA, embedding_sharing=_GDES, **_DECOUPLED, **_RTD_MASK))


def _v3_script(size: str, case: Optional[str], lr_text: str, batch: int) -> Recipe:
    """rtd.sh's case for ``size``; ``case`` None: rtd.sh has none (v3 small), the base case's values."""
    lr = float(lr_text)
    if case is None:
        why = "rtd.sh has no deberta-v3-small case; the value of its deberta-v3-base case (same width)"
        lr_source, batch_source = Ours(f"{why}: --learning_rate 1e-4"), Ours(f"{why}: --train_batch_size 256")
        warmup_source, model = Ours(f"{why}: --warmup 10000"), (f"deberta-v3-{size}", Code(
            "experiments/language_model/rtd_small.json", "\"num_hidden_layers\": 6", "6 layers, hidden 768"))
        described = "rtd.sh has no v3 small case: the values of its deberta-v3-base case"
    else:
        lr_source = Script(RTD_SH, case, "--learning_rate", lr_text)
        batch_source = Script(RTD_SH, case, "--train_batch_size", str(batch))
        warmup_source = Script(RTD_SH, case, "--warmup", "10000")
        model = (f"deberta-v3-{size}", Script(RTD_SH, case, "--model_config", f"rtd_{size}.json"))
        described = f"rtd.sh {case}"
    return Recipe(
        f"DeBERTa-v3 {size} RTD as the official demonstration script runs it ({described}: wikitext-103, "
        f"batch {batch}, lr {lr_text}, 1M steps; decoupled training)",
        SCRIPT,
        dict(objective=("rtd", Script(RTD_SH, None, "Task=", "RTD")),
             model_config=model, lr=(lr, lr_source), global_batch_size=(batch, batch_source),
             warmup_steps=(10_000, warmup_source),
             max_steps=(1_000_000, Script(RTD_SH, None, "--num_training_steps", "1000000")),
             **OPTIMIZER_OF_CODE, rtd_lambda=_LAMBDA,
             embedding_sharing=("gdes", Code(f"experiments/language_model/rtd_{size}.json",
                                             "\"embedding_sharing\": \"gdes\"")),
             **_DECOUPLED, **_RTD_MASK))


def _v3_continue(size: str) -> Recipe:
    """rtd.sh's ``deberta-v3-{size}-continue`` case (xsmall, small); base and large: the same values."""
    case = f"deberta-v3-{size}-continue"
    in_script = size in ("xsmall", "small")

    def src(flag: str, text: str):
        if in_script:
            return Script(RTD_SH, case, flag, text)
        return Ours(f"rtd.sh has no {case} case; the value of its xsmall/small -continue cases: {flag} {text}")

    return Recipe(
        f"Continued RTD pretraining of the released DeBERTa-v3 {size} (discriminator and generator) as "
        f"rtd.sh's -continue cases run it{'' if in_script else ' (rtd.sh has it for xsmall and small only: '}"
        f"{'' if in_script else 'their values)'}: lr 5e-5, batch 256, 10K warm-up, 100K steps. Give the "
        "released weights with --init_model DIR (the discriminator; its pytorch_model.generator.bin is found "
        "beside it) or --init_generator PATH: the recipe names no path",
        SCRIPT,
        dict(objective=("rtd", Script(RTD_SH, None, "Task=", "RTD")),
             model_config=(f"deberta-v3-{size}", Script(RTD_SH, case if in_script else f"deberta-v3-{size}",
                                                         "--model_config", f"rtd_{size}.json")),
             lr=(5e-5, src("--learning_rate", "5e-5")),
             global_batch_size=(256, src("--train_batch_size", "256")),
             warmup_steps=(10_000, src("--warmup", "10000")),
             max_steps=(100_000, src("--num_training_steps", "100000")),
             **OPTIMIZER_OF_CODE, rtd_lambda=_LAMBDA,
             embedding_sharing=("gdes", Code(f"experiments/language_model/rtd_{size}.json",
                                             "\"embedding_sharing\": \"gdes\"")),
             **_DECOUPLED, **_RTD_MASK))


CATALOGUE: dict[str, Recipe] = {
    "deberta-v2-xxlarge-mlm": _v2_mlm_paper("xxlarge", "deberta-v2-xxlarge"),
    "deberta-v2-xlarge-mlm": _v2_mlm_paper("xlarge", "deberta-v2-xlarge"),
    "deberta-v2-xxlarge-mlm-script": _v2_mlm_script("xxlarge", "deberta-v2-xxlarge", "xxlarge-v2"),
    "deberta-v2-xlarge-mlm-script": _v2_mlm_script("xlarge", "deberta-v2-xlarge", "xlarge-v2"),
    **{f"deberta-v3-{size}-rtd": _v3_paper(size) for size in ("xsmall", "small", "base", "large")},
    "deberta-v3-xsmall-rtd-script": _v3_script("xsmall", "deberta-v3-xsmall", "3e-4", 64),
    "deberta-v3-small-rtd-script": _v3_script("small", None, "1e-4", 256),
    "deberta-v3-base-rtd-script": _v3_script("base", "deberta-v3-base", "1e-4", 256),
    "deberta-v3-large-rtd-script": _v3_script("large", "deberta-v3-large", "1e-4", 256),
    **{f"deberta-v3-{size}-continue": _v3_continue(size) for size in ("xsmall", "small", "base", "large")},
}

# What the recipes apply: flag name -> value (pretrain/config.py sets these as defaults).
RECIPES: dict[str, dict] = {name: recipe.values for name, recipe in CATALOGUE.items()}
SOURCES: dict[str, dict[str, Source]] = {name: recipe.sources for name, recipe in CATALOGUE.items()}

# Official settings whose flags do not exist (yet): not applied by --recipe (an unknown
# name makes --recipe fail). Move an entry into its recipe when the flag lands.
PENDING: dict[str, dict] = {}


def describe(name: str) -> str:
    recipe = CATALOGUE[name]
    lines = [f"{name} ({recipe.follows}): {recipe.description}"]
    width = max(map(len, recipe.settings))
    lines += [f"  {key:<{width}} = {value!r:<12} {source}" for key, (value, source) in recipe.settings.items()]
    for key, (value, source) in PENDING.get(name, {}).items():
        lines.append(f"  {key:<{width}} = {value!r:<12} {source} [not applied: no such flag yet]")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys
    print("\n\n".join(describe(name) for name in (sys.argv[1:] or CATALOGUE)))
