"""XNLI (MNLI training, per-language evaluation) and ANLI (rounds) on small files we wrote
in their official layouts: end to end, metrics by hand, bad lines named."""
import json
from pathlib import Path

import numpy as np
import pytest

from deberta import load_tokenizer
from finetune import FinetuneConfig
from finetune.data import DataError
from finetune.main import main
from finetune.tasks import build_task

SPM_MODEL = Path(__file__).resolve().parents[1] / "assets" / "spm.model"
MNLI_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
               "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
XNLI_HEADER = ["language", "gold_label", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse",
               "sentence2_parse", "sentence1", "sentence2", "promptID", "pairID", "genre", "label1", "label2",
               "label3", "label4", "label5", "sentence1_tokenized", "sentence2_tokenized", "match"]
PAIRS = [("the cat sat on the mat", "a cat sat", "entailment"), ("the cat sat on the mat", "no cat sat",
                                                                  "contradiction"),
         ("the cat sat on the mat", "the cat was black", "neutral")]
TRANSLATED = {"en": PAIRS, "de": [("die katze sass", "eine katze sass", "entailment"),
                                  ("die katze sass", "keine katze sass", "contradiction"),
                                  ("die katze sass", "die katze war schwarz", "neutral")],
              "fr": [("le chat dort", "un chat dort", "entailment"), ("le chat dort", "aucun chat ne dort",
                                                                      "contradiction"),
                     ("le chat dort", "le chat est noir", "neutral")]}


def write_tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))


def xnli_row(language, k, premise, hypothesis, label):
    return [language, label, "", "", "", "", premise, hypothesis, k, f"{language}-{k}", "facetoface",
            label, label, label, label, label, premise, hypothesis, "True"]


def write_xnli(root):
    write_tsv(root / "MNLI" / "train.tsv", MNLI_HEADER,
              [(i, 0, i, "g", "", "", "", "", p, h, y, y) for i, (p, h, y) in enumerate(PAIRS * 2)])
    for split in ("dev", "test"):
        write_tsv(root / "XNLI-1.0" / f"xnli.{split}.tsv", XNLI_HEADER,
                  [xnli_row(lang, k, *pair) for lang, pairs in TRANSLATED.items() for k, pair in enumerate(pairs)])
    return root / "MNLI" / "train.tsv", root / "XNLI-1.0"


def anli_row(round_name, k, label):
    return {"uid": f"{round_name}-{k}", "context": "The river runs past the old mill.", "label": label,
            "hypothesis": ["A river runs past a mill.", "The mill is new.", "The mill is red."][k % 3],
            "reason": "", "tag": "", "model_label": "n", "emturk": False, "genre": "wiki"}


def write_anli(root):
    for r in ("R1", "R2", "R3"):
        for split, n in (("train", 6), ("dev", 3), ("test", 3)):
            folder = root / "anli_v1.0" / r
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{split}.jsonl").write_text(
                "".join(json.dumps(anli_row(r, k, "enc"[k % 3])) + "\n" for k in range(n)))
    return root / "anli_v1.0"


def run_main(tmp_path, *args):
    out = tmp_path / "out"
    code = main([*args, "--output_dir", str(out), "--max_steps", "1", "--micro_batch_size", "4",
                 "--max_seq_length", "32", "--no-progress_bar", "--no-tensorboard"])
    assert code == 0
    return json.loads((out / "eval_results.json").read_text()), out


def make_task(task, **fields):
    config = FinetuneConfig.create(task=task, model="unused", output_dir="unused", max_seq_length=32, **fields).run
    return build_task(config, load_tokenizer(SPM_MODEL))


def test_xnli_trains_on_mnli_and_scores_each_language(tmp_path, tiny_model):
    train, xnli = write_xnli(tmp_path)
    results, out = run_main(tmp_path, "--task", "xnli", "--train", str(train), "--data_dir", str(xnli),
                            "--model", tiny_model)
    languages = ["de", "en", "fr"]
    assert results["accuracy"] == pytest.approx(np.mean([results[f"accuracy_{lang}"] for lang in languages]))
    assert {f"test/accuracy_{lang}" for lang in languages} | {"test/accuracy"} <= set(results)
    lines = (out / "predictions_test.tsv").read_text().splitlines()
    assert lines[0] == "language\tpairID\tprediction\tlabel" and len(lines) == 10
    assert lines[1].split("\t")[:2] == ["en", "en-0"] and lines[1].split("\t")[3] == "entailment"
    assert json.loads((out / "best" / "config.json").read_text())["finetune"]["labels"] == [
        "contradiction", "entailment", "neutral"]  # MNLI's label set


def test_xnli_per_language_accuracy_and_average_by_hand(tmp_path):
    _, xnli = write_xnli(tmp_path)
    task = make_task("xnli", train="unused", data_dir=str(xnli))
    split = task.load("dev", xnli / "xnli.dev.tsv", labelled=True)
    assert [p.language for p in split.examples] == ["en"] * 3 + ["de"] * 3 + ["fr"] * 3
    # Always predict "entailment" (index 1): each language gets 1 of 3 right; make de get 2.
    outputs = [np.eye(3)[1] for _ in range(9)]
    outputs[4] = np.eye(3)[0]  # de, second pair: contradiction (index 0), right
    metrics, _ = task.score(split, outputs)
    assert metrics["accuracy_en"] == pytest.approx(1 / 3) and metrics["accuracy_de"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 3) / 3)


def test_xnli_per_language_files(tmp_path):
    folder = tmp_path / "xnli"
    for lang in ("en", "sw"):
        write_tsv(folder / f"dev-{lang}.tsv", ["sentence1", "sentence2", "gold_label"], TRANSLATED["en"])
    task = make_task("xnli", train="unused", data_dir=str(folder))
    assert task.eval_files() == {"dev": folder}
    split = task.load("dev", folder, labelled=True)
    assert [p.language for p in split.examples] == ["en"] * 3 + ["sw"] * 3


def test_xnli_without_mnli_says_where_to_get_it(tmp_path):
    _, xnli = write_xnli(tmp_path)
    with pytest.raises(DataError, match=r"MNLI training file not found: .*give --train glue/MNLI/train\.tsv"):
        make_task("xnli", data_dir=str(xnli)).train_file()


def test_xnli_unknown_label_names_file_and_line(tmp_path):
    _, xnli = write_xnli(tmp_path)
    text = (xnli / "xnli.dev.tsv").read_text().replace("\tneutral\t", "\tmaybe\t", 1)
    (xnli / "xnli.dev.tsv").write_text(text)
    with pytest.raises(DataError, match=r"xnli\.dev\.tsv, line 4: label 'maybe' is not one of the labels"):
        make_task("xnli", train="unused", data_dir=str(xnli)).load("dev", xnli / "xnli.dev.tsv", labelled=True)


@pytest.mark.parametrize("task, expected", [("anli", {"accuracy", "accuracy_r1", "accuracy_r2", "accuracy_r3",
                                                      "test/accuracy", "test/accuracy_r3"}),
                                            ("anli-r2", {"accuracy", "test/accuracy"})])
def test_anli_rounds_end_to_end(tmp_path, tiny_model, task, expected):
    root = write_anli(tmp_path)
    data_dir = root / "R2" if task == "anli-r2" else root  # one round: its own folder works too
    results, out = run_main(tmp_path, "--task", task, "--data_dir", str(data_dir), "--model", tiny_model)
    assert expected <= set(results) and not ({"accuracy_r1"} - expected) & set(results)
    predictions = [json.loads(line) for line in (out / "predictions_dev.jsonl").read_text().splitlines()]
    assert len(predictions) == (9 if task == "anli" else 3)
    assert set(predictions[0]) == {"uid", "round", "prediction", "label"} and predictions[0]["label"] == "e"


def test_anli_combined_and_per_round_accuracy_by_hand(tmp_path):
    root = write_anli(tmp_path)
    task = make_task("anli", data_dir=str(root))
    split = task.load("dev", root, labelled=True)
    assert [p.round for p in split.examples] == ["R1"] * 3 + ["R2"] * 3 + ["R3"] * 3
    # Gold e n c per round. Predict e everywhere, except R3 gets all three right.
    outputs = [np.eye(3)[0]] * 6 + [np.eye(3)[k] for k in range(3)]
    metrics, _ = task.score(split, outputs)
    assert metrics == pytest.approx({"accuracy": 5 / 9, "accuracy_r1": 1 / 3, "accuracy_r2": 1 / 3,
                                     "accuracy_r3": 1.0})


def test_anli_bad_label_and_missing_round(tmp_path):
    root = write_anli(tmp_path)
    lines = (root / "R2" / "dev.jsonl").read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "label": "neutral"})
    (root / "R2" / "dev.jsonl").write_text("\n".join(lines) + "\n")
    task = make_task("anli", data_dir=str(root))
    with pytest.raises(DataError, match=r"R2/dev\.jsonl, line 2: label 'neutral' is not one of \['e', 'n', 'c'\]"):
        task.load("dev", root, labelled=True)
    (root / "R3" / "train.jsonl").unlink()
    with pytest.raises(DataError, match=r"ANLI R3 train file not found"):
        task.load("train", root, labelled=True)
