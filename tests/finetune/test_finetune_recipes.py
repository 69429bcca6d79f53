"""Finetuning recipes: the table holds the official values it cites (read from the mirrored
official repository when it is here, ``DEBERTA_OFFICIAL_REPO``, and against values written
below), a model's size class picks its recipe, small models get ours, flags and --config
win over a recipe and a recipe over the DeepSpeed JSON, the listing command, the MNLI start
(--init_task_model) and the official pair truncation."""
from __future__ import annotations

import functools
import json
import os
import random
import re
import subprocess
from pathlib import Path

import pytest
import torch

from deberta import DebertaConfig, PRESETS, build_model, load_tokenizer, save_model
from deberta.checkpoint import CheckpointError, read_config
from finetune.config import FinetuneConfig, parse_args
from finetune.data import truncate_official, truncation_rng
from finetune.main import main as finetune_main
from finetune.recipes import (CATALOGUE, SCRIPTS, SMALL_MODEL, choose, main as list_recipes, size_class,
                              start_from_task_model)
from pretrain.recipes import Code, Ours, Script

MIRROR = Path(os.environ.get("DEBERTA_OFFICIAL_REPO", "/work/.mirror/microsoft+DeBERTa/repo"))


@functools.lru_cache(maxsize=None)
def _official(path: str):
    """The text of an official file, or None where no copy of the repository is here."""
    if (MIRROR / path).is_file():
        return (MIRROR / path).read_text(encoding="utf-8")
    if not MIRROR.exists():
        return None
    done = subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:{path}"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def _case_block(script: str, case):
    """The lines of one ``case`` branch (None: the command every case runs, outside ``case ... esac``)."""
    if case is None:
        return re.sub(r"^case .*?^esac", "", script, flags=re.M | re.S)
    match = re.search(rf"^\s*{re.escape(case)}\)\s*$(.*?)^\s*;;", script, re.M | re.S)
    assert match, f"no case {case!r}"
    return match.group(1)


def _cited():
    seen = set()
    for name, recipe in CATALOGUE.items():
        sources = list(recipe.sources.values()) + ([recipe.starts_from[1]] if recipe.starts_from else [])
        for source in sources:
            if isinstance(source, (Script, Code)) and source not in seen:
                seen.add(source)
                yield name, source


@pytest.mark.parametrize("name,source", list(_cited()), ids=lambda item: item if isinstance(item, str) else None)
def test_every_cited_line_is_in_the_official_repository(name, source):
    text = _official(source.path)
    if text is None:
        pytest.skip(f"no copy of the official repository at {MIRROR}")
    if isinstance(source, Code):
        assert re.sub(r"\s+", " ", source.text) in re.sub(r"\s+", " ", text), (name, str(source))
        return
    block = _case_block(text, source.case)
    if source.flag.endswith("="):
        assert re.search(rf"^\s*{re.escape(source.line)}\s*$", block, re.M), (name, str(source))
    else:
        assert re.search(rf"{re.escape(source.flag)}\s+{re.escape(source.text)}(\s|\\|\"|$)", block), (name, str(source))


def test_every_script_case_and_flag_is_in_the_table():
    """The other way round: each case of each script (but bert-xsmall, not a DeBERTa) has its recipe."""
    for task, script in SCRIPTS.items():
        text = _official(script.path)
        if text is None:
            pytest.skip(f"no copy of the official repository at {MIRROR}")
        cases = set(re.findall(r"^\s*([\w.-]+)\)\s*$", text, re.M)) - {"bert-xsmall"}
        assert cases == set(script.cases), task
        for case in cases:
            flags = set(re.findall(r"(--(?:num_train_epochs|warmup|learning_rate|train_batch_size|cls_drop_out|"
                                   r"max_seq_len|vat_\w+))\s+([^\s\\\"]+)", _case_block(text, case)))
            assert flags == set(zip(script.cases[case].split()[::2], script.cases[case].split()[1::2])), (task, case)
            starts = bool(re.search(r"init=\$\{?init\}?-mnli", _case_block(text, case)))
            assert starts == (case in script.mnli_start), (task, case)


def test_the_table_holds_the_official_values():
    """Written out by hand from the scripts (the issue quotes the first two)."""
    v3_mnli = CATALOGUE["mnli/deberta-v3-large"].values
    assert (v3_mnli["max_seq_length"], v3_mnli["epochs"], v3_mnli["lr"], v3_mnli["global_batch_size"],
            v3_mnli["warmup_steps"], v3_mnli["cls_dropout"]) == (256, 2.0, 7e-6, 64, 500, 0.3)
    cola = CATALOGUE["cola/deberta-v3-large"].values
    assert (cola["max_seq_length"], cola["epochs"], cola["lr"], cola["global_batch_size"]) == (64, 10.0, 5.5e-6, 32)
    rte = CATALOGUE["rte/xxlarge-v2"]
    assert (rte.values["lr"], rte.values["global_batch_size"], rte.values["max_seq_length"]) == (3e-6, 48, 320)
    assert rte.starts_from[0] == "mnli" and CATALOGUE["mrpc/base"].starts_from[0] == "mnli"
    assert CATALOGUE["sts-b/large"].starts_from[0] == "mnli" and CATALOGUE["rte/deberta-v3-large"].starts_from is None
    assert CATALOGUE["sst-2/large"].starts_from is None
    sift = CATALOGUE["mnli/deberta-v3-base-sift"].values
    assert (sift["sift"], sift["sift_lambda"], sift["sift_step_size"], sift["sift_init_noise"], sift["epochs"]) == \
        (True, 5.0, 1e-4, 1e-2, 6.0)
    assert CATALOGUE["mnli/deberta-v3-xsmall-sift"].values["sift_lambda"] == 3.0
    assert CATALOGUE["mnli/xlarge-v2"].values["cls_dropout"] == 0.25 and CATALOGUE["mnli/base"].values["sift"] is False
    ner = CATALOGUE["ner/base"].values
    assert (ner["warmup_ratio"], ner["warmup_steps"], ner["cls_dropout"], ner["epochs"]) == (0.1, 0, 0.0, 15.0)
    assert CATALOGUE["ner/deberta-v3-large"].values["warmup_steps"] == 10
    for recipe in CATALOGUE.values():  # the official optimizer, unless the recipe is ours
        if recipe.size_class != SMALL_MODEL:
            values = recipe.values
            assert (values["adam_bias_correction"], values["clip_grad"], values["weight_decay"],
                    values["pair_truncation"]) == (False, 1.0, 0.01, "official")


def test_sizes_without_a_case_borrow_the_base_case_and_say_so():
    borrowed = CATALOGUE["sst-2/deberta-v3-base"]
    assert borrowed.values["lr"] == CATALOGUE["sst-2/base"].values["lr"] == 2e-5
    assert all(isinstance(borrowed.sources[k], Ours) and "no deberta-v3-base case" in str(borrowed.sources[k])
               for k in ("lr", "epochs", "cls_dropout", "max_seq_length"))
    assert borrowed.starts_from is None and CATALOGUE["rte/deberta-v3-base"].starts_from is None
    assert isinstance(CATALOGUE["mnli/deberta-v3-base"].sources["lr"], Script)  # mnli.sh has this case


@pytest.mark.parametrize("preset,expected", [
    ("deberta-base", "base"), ("deberta-large", "large"), ("deberta-xlarge", "xlarge"),
    ("deberta-v2-xlarge", "xlarge-v2"), ("deberta-v2-xxlarge", "xxlarge-v2"),
    ("deberta-v3-xsmall", "deberta-v3-xsmall"), ("deberta-v3-small", "deberta-v3-small"),
    ("deberta-v3-base", "deberta-v3-base"), ("deberta-v3-large", "deberta-v3-large"),
    ("mdeberta-v3-base", "deberta-v3-base"), ("deberta-large-mnli", "large"),
])
def test_size_class_of_every_preset(preset, expected):
    assert size_class(DebertaConfig(**PRESETS[preset]))[0] == expected


def test_size_class_of_shapes_no_preset_has():
    main_job = DebertaConfig(**{**PRESETS["deberta-v3-xsmall"], "hidden_size": 128, "num_hidden_layers": 4,
                                "num_attention_heads": 4, "intermediate_size": 512})
    found, why = size_class(main_job)
    assert found == SMALL_MODEL and "smaller than every preset" in why
    between = DebertaConfig(**{**PRESETS["deberta-v3-large"], "num_hidden_layers": 20})
    assert size_class(between) == ("deberta-v3-large", "20 layers, width 1024: no preset has it; the nearest in "
                                                       "size is deberta-v3-large")


@pytest.fixture
def tiny_folder(tiny_model):
    """conftest's 2-layer, 32-wide model (a masked-LM head, as pretraining leaves it)."""
    return tiny_model


BASE = ["--output_dir", "o", "--data_dir", "d"]


def test_auto_recipe_from_task_and_model_and_the_precedence(tmp_path, tiny_folder):
    chosen = parse_args(BASE + ["--task", "sst-2", "--model", tiny_folder])
    assert chosen.recipe["name"] == "sst-2/small-model"
    assert (chosen.optimizer.lr, chosen.run.epochs, chosen.run.max_seq_length, chosen.engine.global_batch_size,
            chosen.optimizer.warmup_ratio) == (5e-4, 0.5, 64, 32, 0.06)
    assert chosen.recipe["settings"]["lr"]["applied"] is True
    assert chosen.recipe["settings"]["lr"]["source"].startswith("our choice")
    # A flag wins over the recipe, and the record says which recipe value did not hold.
    flagged = parse_args(BASE + ["--task", "sst-2", "--model", tiny_folder, "--learning_rate", "1e-3"])
    assert flagged.optimizer.lr == 1e-3 and flagged.run.epochs == 0.5
    assert flagged.recipe["settings"]["lr"]["applied"] is False
    # The config file wins over the recipe; a flag over the config file.
    run_file = tmp_path / "run.yaml"
    run_file.write_text(f"task: rte\nmodel: {tiny_folder}\nepochs: 2\nmax_seq_length: 96\n")
    from_file = parse_args(BASE + ["--config", str(run_file), "--max_seq_length", "80"])
    assert from_file.recipe["name"] == "rte/small-model"
    assert (from_file.run.epochs, from_file.run.max_seq_length, from_file.optimizer.lr) == (2.0, 80, 5e-4)
    # The recipe wins over the DeepSpeed JSON (its global batch; the JSON's micro-batch stays).
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 8}))
    with_json = parse_args(BASE + ["--task", "sst-2", "--model", tiny_folder, "--ds_config", str(ds)])
    from training.ds_config import resolve_ds_config
    resolved = resolve_ds_config(with_json.engine, with_json.optimizer, 1, default_micro=32)
    assert (resolved["train_batch_size"], resolved["train_micro_batch_size_per_gpu"],
            resolved["gradient_accumulation_steps"]) == (32, 8, 4)
    # Micro-batch and accumulation given together fix the batch: the recipe's global yields.
    fixed = parse_args(BASE + ["--task", "sst-2", "--model", tiny_folder, "--batch_size", "2",
                               "--gradient_accumulation_steps", "2"])
    assert fixed.engine.global_batch_size == 0
    # --recipe none: finetuning's own defaults; --recipe NAME: that recipe, whatever the model.
    plain = parse_args(BASE + ["--task", "sst-2", "--model", tiny_folder, "--recipe", "none"])
    assert plain.recipe["name"] is None and (plain.optimizer.lr, plain.run.epochs) == (2e-5, 3.0)
    named = parse_args(BASE + ["--task", "mnli", "--model", tiny_folder, "--recipe", "mnli/deberta-v3-large"])
    assert (named.optimizer.lr, named.run.cls_dropout, named.optimizer.adam_bias_correction) == (7e-6, 0.3, False)
    # Tasks without an official script (and an unreadable model) run on the defaults.
    assert parse_args(BASE + ["--task", "squad", "--model", tiny_folder]).recipe["name"] is None
    assert parse_args(BASE + ["--task", "sst-2", "--model", "missing"]).recipe["name"] is None


def test_a_bad_recipe_name_exits_naming_it(tiny_folder, capsys):
    with pytest.raises(SystemExit):
        parse_args(BASE + ["--task", "sst-2", "--model", tiny_folder, "--recipe", "sst-2/huge"])
    assert "--recipe 'sst-2/huge' is not a recipe" in capsys.readouterr().err


def test_create_applies_a_recipe_only_when_asked(tiny_folder):
    values = dict(task="rte", model=tiny_folder, output_dir="o", data_dir="d")
    assert FinetuneConfig.create(**values).optimizer.lr == 2e-5
    asked = FinetuneConfig.create(recipe="auto", epochs=1, **values)
    assert (asked.optimizer.lr, asked.run.epochs, asked.recipe["name"]) == (5e-4, 1.0, "rte/small-model")
    assert choose("rte/large", None, None) == ("rte/large", "--recipe rte/large")


def test_listing_command_prints_values_with_sources(capsys):
    assert list_recipes(["rte"]) == 0
    text = capsys.readouterr().out
    assert "rte/deberta-v3-large:" in text and "mnli/" not in text
    assert "experiments/glue/rte.sh (case deberta-v3-large): --learning_rate 1e-5" in text
    assert "init=$init-mnli (give --init_task_model DIR)" in text
    assert "rte/small-model" in text and "our choice" in text
    assert list_recipes(["nosuchtask"]) == 2


def test_run_records_its_recipe_and_starts_from_a_task_model(tmp_path, tiny_folder, sentiment_files, capsys):
    _classifier_folder(tmp_path / "mnli", tiny_folder, 3, seed=1)
    out = tmp_path / "out"
    assert finetune_main(["--task", "sst-2", "--data_dir", str(sentiment_files), "--model", tiny_folder,
                          "--output_dir", str(out), "--max_steps", "1", "--no-tensorboard", "--no-save_best",
                          "--init_task_model", str(tmp_path / "mnli")]) == 0
    recorded = json.loads((out / "finetune_config.json").read_text())
    assert recorded["recipe"]["name"] == "sst-2/small-model"
    assert recorded["recipe"]["settings"]["max_seq_length"]["value"] == 64
    assert recorded["run"]["init_task_model"] == str(tmp_path / "mnli")
    printed = capsys.readouterr().out
    assert "recipe: sst-2/small-model (--task sst-2 on" in printed
    assert "(finetuned on mnli): backbone and pooler kept; new classifier.weight, classifier.bias" in printed


def _classifier_folder(path, like: str, num_labels: int, seed: int, **changes):
    """A sequence classifier of ``like``'s architecture (with ``changes``), saved as an MNLI run's best/."""
    torch.manual_seed(seed)
    config = read_config(like)[0].replace(num_labels=num_labels, **changes)
    model = build_model(config, "sequence_classification")
    save_model(model, path, load_tokenizer(like), extra={"finetune": {"task": "mnli"}})
    return model


def test_start_from_an_mnli_model_replaces_a_misfit_classifier_and_keeps_the_rest(tmp_path, tiny_folder):
    mnli = _classifier_folder(tmp_path / "mnli", tiny_folder, 3, seed=1)
    from deberta import load_model
    rte = load_model(tiny_folder, head="sequence_classification", num_labels=2)
    fresh_classifier = rte.classifier.weight.clone()
    note = start_from_task_model(rte, str(tmp_path / "mnli"))
    assert "finetuned on mnli" in note and "new classifier.weight, classifier.bias" in note
    theirs = mnli.state_dict()
    for name, tensor in rte.state_dict().items():
        if name.startswith(("deberta.", "pooler.")):
            assert torch.equal(tensor, theirs[name]), name
    assert torch.equal(rte.classifier.weight, fresh_classifier)
    # STS-B: one regression output, a new head too; a same-shaped head (3 labels) is kept.
    three = load_model(tiny_folder, head="sequence_classification", num_labels=3)
    assert "classifier kept" in start_from_task_model(three, str(tmp_path / "mnli"))
    assert torch.equal(three.classifier.weight, theirs["classifier.weight"])
    # Another architecture or head is refused, naming the folder.
    wide = tmp_path / "wide"
    _classifier_folder(wide, tiny_folder, 2, seed=2, hidden_size=64, intermediate_size=128)
    with pytest.raises(CheckpointError, match="not the architecture of --model"):
        start_from_task_model(load_model(tiny_folder, head="sequence_classification", num_labels=2), str(wide))
    with pytest.raises(CheckpointError, match="a masked_lm model"):
        start_from_task_model(rte, tiny_folder)


# --- the official pair truncation ---------------------------------------------------------------

def _official_truncate():
    """The official function, read from the mirror and run as it is (None without the mirror)."""
    text = _official("DeBERTa/data/example.py")
    if text is None:
        return None
    source = re.search(r"^def _truncate_segments\(.*?(?=^def )", text, re.M | re.S).group(0)
    scope: dict = {}
    exec(source, scope)  # noqa: S102 - the reference implementation under comparison
    return scope["_truncate_segments"]


def test_official_truncation_by_hand():
    first, second = list(range(10)), list(range(100, 112))
    truncate_official([first, second], 19, random.Random(0))
    # 22 tokens to 19: the longer (second) loses 2 to reach 10, then ties go to the one
    # the previous sort put first (second again): 10 + 9.
    assert (len(first), len(second)) == (10, 9) and first == list(range(10))
    assert second == list(range(second[0], second[0] + 9)) and 100 <= second[0] <= 103  # a middle slice
    single = list(range(20))
    truncate_official([single], 8, random.Random(3))
    assert len(single) == 8 and single == list(range(single[0], single[0] + 8)) and 0 < single[0] < 12
    again = list(range(20))
    truncate_official([again], 8, random.Random(3))
    assert again == single  # the generator decides
    assert truncation_rng(1, Path("a/dev.tsv"), 7).random() == truncation_rng(1, Path("b/dev.tsv"), 7).random()
    assert truncation_rng(1, Path("dev.tsv"), 7).random() != truncation_rng(2, Path("dev.tsv"), 7).random()


def test_official_truncation_matches_the_official_code():
    official = _official_truncate()
    if official is None:
        pytest.skip(f"no copy of the official repository at {MIRROR}")
    draw = random.Random(5)
    for case in range(300):
        lengths = [draw.randint(0, 40) for _ in range(draw.choice((1, 2, 3)))]
        segments = [list(range(1000 * i, 1000 * i + n)) for i, n in enumerate(lengths)]
        budget = draw.randint(max(lengths) and 1, sum(lengths) + 3)
        theirs = official([list(s) for s in segments], budget, random.Random(case))
        ours = [list(s) for s in segments]
        truncate_official(ours, budget, random.Random(case))
        # The same tokens survive; the official returns them sorted by length (we keep the order).
        assert sorted(map(tuple, theirs)) == sorted(map(tuple, ours)), (lengths, budget)


def test_official_truncation_in_a_task(tmp_path, tiny_folder, write_tsv):
    long_premise = " ".join(["the river runs past the old mill"] * 10)
    write_tsv(tmp_path / "train.tsv", ["index", "sentence1", "sentence2", "label"],
              [(0, long_premise, "a river", "entailment"), (1, "short", "text", "not_entailment")])
    from finetune.tasks import build_task
    tokenizer = load_tokenizer(tiny_folder)
    for mode in ("longest_first", "official"):
        config = FinetuneConfig.create(task="rte", model=tiny_folder, output_dir="o", data_dir=str(tmp_path),
                                       max_seq_length=24, pair_truncation=mode, seed=3).run
        split = build_task(config, tokenizer).load("train", tmp_path / "train.tsv", True)
        ids = split.features[0]["input_ids"]
        premise = tokenizer.encode(long_premise)
        kept = ids[1:ids.index(tokenizer.sep_token_id)]
        assert len(ids) == 24 and len(kept) == 24 - 3 - len(tokenizer.encode("a river"))
        start = next(i for i in range(len(premise)) if premise[i:i + len(kept)] == kept)
        assert (start == 0) == (mode == "longest_first")  # official: cut at both ends (seed 3)
        assert split.features[1]["input_ids"][1:-1] == (tokenizer.encode("short") + [tokenizer.sep_token_id]
                                                        + tokenizer.encode("text"))


@pytest.mark.slow  # two finetuning runs in their own processes
def test_bench_runs_the_default_command_over_seeds_and_reuses_finished_runs(tmp_path, tiny_folder, sentiment_files):
    from bench import finetune_recipes
    glue = tmp_path / "glue"
    glue.mkdir()
    (glue / "SST-2").symlink_to(sentiment_files, target_is_directory=True)
    out, figures = tmp_path / "runs", tmp_path / "figures.json"
    argv = ["--model", tiny_folder, "--data_dir", str(glue), "--tasks", "sst-2", "--seeds", "1", "2",
            "--output_dir", str(out), "--json", str(figures)]
    assert finetune_recipes.main(argv) == 0
    task = json.loads(figures.read_text())["results"]["tasks"]["sst-2"]
    values = [task["runs"][seed]["best"]["accuracy"] for seed in ("1", "2")]
    assert task["recipe"] == "sst-2/small-model" and task["median"] == sorted(values)[0] + (
        sorted(values)[1] - sorted(values)[0]) / 2
    recorded = json.loads((out / "sst-2_seed2" / "finetune_config.json").read_text())
    assert recorded["run"]["seed"] == 2 and recorded["recipe"]["name"] == "sst-2/small-model"
    # Finished runs of the same settings are reused; a run whose settings differ is not.
    stamp = (out / "sst-2_seed1" / "summary.json").stat().st_mtime
    assert finetune_recipes.main(argv) == 0
    assert (out / "sst-2_seed1" / "summary.json").stat().st_mtime == stamp
    recorded["optimizer"]["lr"] = 1.0
    assert finetune_recipes.differences(recorded, parse_args(finetune_recipes.command(
        "sst-2", glue, tiny_folder, out / "sst-2_seed2", 2)).to_dict()) == ["optimizer.lr: 1.0 != 0.0005"]
