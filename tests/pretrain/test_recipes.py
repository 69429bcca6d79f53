"""The recipe table holds the values it cites: every key has a source; script-sourced values
equal the cited flag line, read from the mirrored official repository when it is here
(``DEBERTA_OFFICIAL_REPO``: a bare git dir or a checkout) and otherwise from the text written
next to the citation; official code defaults occur in the cited file."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from deberta import DebertaConfig
from pretrain.config import parse_args
from pretrain.recipes import CATALOGUE, PAPER, PENDING, RECIPES, SCRIPT, Code, Ours, Paper, Script

MIRROR = Path(os.environ.get("DEBERTA_OFFICIAL_REPO", "/work/.mirror/microsoft+DeBERTa/repo"))
ARCHITECTURE = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


def _official(path: str):
    """The text of an official file, or None where no copy of the repository is here."""
    if (MIRROR / path).is_file():
        return (MIRROR / path).read_text(encoding="utf-8")
    if not MIRROR.exists():
        return None
    done = subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:{path}"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _case_block(script: str, case):
    """The lines of one ``case`` branch of a script (None: what every case runs, outside ``case ... esac``)."""
    if case is None:
        return re.sub(r"^case .*?^esac", "", script, flags=re.M | re.S)
    match = re.search(rf"^\s*{re.escape(case)}\)\s*$(.*?)^\s*;;", script, re.M | re.S)
    assert match, f"no case {case!r}"
    return match.group(1)


def _script_value(value, text: str) -> bool:
    """Whether the flag text states the recipe value (JSON model configs are compared elsewhere)."""
    if isinstance(value, bool):
        return text.lower() == str(value).lower()
    if isinstance(value, (int, float)):
        return float(text) == float(value)
    return text.endswith(".json") or text.lower() == str(value).lower()


def _sources():
    for name, recipe in CATALOGUE.items():
        for key, (value, source) in recipe.settings.items():
            yield name, key, value, source


def test_every_recipe_names_what_it_follows_and_a_source_for_each_key():
    for name, recipe in CATALOGUE.items():
        assert recipe.follows in (PAPER, SCRIPT) and recipe.description, name
        assert set(recipe.sources) == set(RECIPES[name]), name
        for key, source in recipe.sources.items():
            assert isinstance(source, (Script, Code, Paper, Ours)) and str(source).strip(), (name, key)
            assert not isinstance(source, Script) or source.text, (name, key)
    # Both kinds where they differ: each v3 size and each v2 size has a paper and a script recipe.
    for size in ("xsmall", "small", "base", "large"):
        assert CATALOGUE[f"deberta-v3-{size}-rtd"].follows == PAPER
        assert CATALOGUE[f"deberta-v3-{size}-rtd-script"].follows == SCRIPT
        assert CATALOGUE[f"deberta-v3-{size}-continue"].follows == SCRIPT
    for size in ("xlarge", "xxlarge"):
        assert CATALOGUE[f"deberta-v2-{size}-mlm"].follows == PAPER
        assert CATALOGUE[f"deberta-v2-{size}-mlm-script"].follows == SCRIPT


@pytest.mark.parametrize("name,key,value,source",
                         [item for item in _sources() if isinstance(item[3], Script)],
                         ids=lambda item: item if isinstance(item, str) else None)
def test_script_values_are_the_cited_flag_lines(name, key, value, source):
    assert _script_value(value, source.text), f"{name}.{key} = {value!r} but cites {source}"
    script = _official(source.path)
    if script is None:
        pytest.skip(f"no copy of the official repository at {MIRROR}")
    block = _flat(_case_block(script, source.case))
    assert source.line in block, f"{name}.{key}: {source.line!r} not in {source.path} case {source.case}"
    if key == "model_config":  # the JSON the script names has our preset's shape (RTD: the discriminator's)
        config = json.loads(_official(f"experiments/language_model/{source.text}"))
        config = config.get("discriminator", config)
        preset = DebertaConfig.from_preset(value)
        assert {k: config[k] for k in ARCHITECTURE} == {k: getattr(preset, k) for k in ARCHITECTURE}, name


@pytest.mark.parametrize("source", sorted({s for *_, s in _sources() if isinstance(s, Code)} |
                                          {s for pending in PENDING.values() for _, s in pending.values()},
                                          key=str), ids=str)
def test_official_code_defaults_are_in_the_cited_files(source):
    code = _official(source.path)
    if code is None:
        pytest.skip(f"no copy of the official repository at {MIRROR}")
    assert _flat(source.text) in _flat(code), str(source)


def test_paper_and_our_values_are_the_ones_written_next_to_them():
    """The values of the paper recipes: Table 8 of the DeBERTa paper (copied here by hand)."""
    table8 = {"DeBERTa_1.5B": (1.5e-4, 2048), "DeBERTa_base": (2e-4, 2048), "DeBERTa_large": (2e-4, 2048)}
    for name, recipe in CATALOGUE.items():
        if recipe.follows != PAPER:
            continue
        values = recipe.values
        assert (values["adam_beta1"], values["adam_beta2"], values["adam_eps"]) == (0.9, 0.999, 1e-6), name
        assert (values["weight_decay"], values["clip_grad"], values["warmup_steps"]) == (0.01, 1.0, 10_000), name
        assert values["max_steps"] == 1_000_000 and values["adam_bias_correction"] is False, name
        column = next((c for c in table8 if c in str(recipe.sources["lr"])), "DeBERTa_base")
        assert (values["lr"], values["global_batch_size"]) == table8[column] or \
            isinstance(recipe.sources["lr"], Ours), name
    for name in RECIPES:
        if name.startswith("deberta-v3"):
            assert RECIPES[name]["rtd_lambda"] == 50.0 and RECIPES[name]["max_ngram"] == 1
            assert (RECIPES[name]["replace_with_mask"], RECIPES[name]["replace_with_random"]) == (1.0, 0.0)
        else:
            assert RECIPES[name]["max_ngram"] == 3, name  # the official v2 MLM and the paper's span masking


def test_pending_settings_are_not_applied_and_continue_recipes_name_no_path():
    for name, pending in PENDING.items():
        assert name in CATALOGUE and not set(pending) & set(RECIPES[name]), name
    for name, values in RECIPES.items():
        assert not any(isinstance(v, str) and ("TODO" in v or "/" in v) for v in values.values()), name
        if name.endswith("-continue"):
            assert "--init_model" in CATALOGUE[name].description and "--init_generator" in CATALOGUE[name].description


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_recipe_reaches_the_parsed_settings(name):
    config = parse_args(["--data_dir", "x", "--recipe", name])
    parsed = {**{k: v for section in config.to_dict().values() for k, v in section.items()}}
    for key, value in RECIPES[name].items():
        assert parsed[key] == value, (name, key, parsed[key], value)
