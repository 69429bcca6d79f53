"""Every task type trains a few steps on tiny files and writes its metrics and predictions."""
import json
import os

import pytest

from finetune import FinetuneConfig, Trainer
from finetune.main import main

FAST = dict(micro_batch_size=4, eval_batch_size=8, lr=1e-3, progress_bar=False, tensorboard=False,
            max_seq_length=64)


def run(tmp_path, **fields) -> dict:
    config = FinetuneConfig.create(output_dir=str(tmp_path / "out"), **{**FAST, **fields})
    best = Trainer(config).train()
    # A world of one leaves no rendezvous port behind for processes started later.
    assert not {"MASTER_PORT", "MASTER_ADDR", "RANK", "WORLD_SIZE"} & set(os.environ)
    return best


def results(tmp_path) -> dict:
    return json.loads((tmp_path / "out" / "eval_results.json").read_text())


def test_glue_sentence_task_learns_and_writes_submission(tmp_path, tiny_model, sentiment_files):
    best = run(tmp_path, task="sst-2", data_dir=str(sentiment_files), model=tiny_model, epochs=8)
    out = tmp_path / "out"
    assert results(tmp_path) == best and {"accuracy", "loss", "step", "epoch"} <= set(best)
    # 12 clearly worded sentences, seen 16 times each: far above the 50 % of guessing.
    assert best["accuracy"] >= 0.75
    predictions = (out / "predictions_dev.tsv").read_text().splitlines()
    assert predictions[0] == "index\tprediction\tlabel" and len(predictions) == 13
    submission = (out / "SST-2.tsv").read_text().splitlines()  # GLUE's format for the test split
    assert submission[0] == "index\tprediction" and len(submission) == 13
    assert {line.split("\t")[1] for line in submission[1:]} <= {"0", "1"}
    assert (out / "best" / "model.safetensors").is_file()
    stored = json.loads((out / "best" / "config.json").read_text())
    assert stored["head"] == "sequence_classification" and stored["finetune"]["labels"] == ["0", "1"]
    history = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert len(history) == 8 and max(h["accuracy"] for h in history) == best["accuracy"]


def test_glue_pair_regression_sts_b(tmp_path, tiny_model, write_tsv):
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
              "sentence2", "score"]
    rows = [(i, "g", "f", "y", i, "s", "s", f"a man plays {w}", f"a man is playing {w}", 5.0 - i % 5)
            for i, w in enumerate(["guitar", "piano", "drums", "chess", "cards", "golf"])]
    write_tsv(tmp_path / "train.tsv", header, rows)
    write_tsv(tmp_path / "dev.tsv", header, rows)
    best = run(tmp_path, task="sts-b", data_dir=str(tmp_path), model=tiny_model, max_steps=3)
    assert {"pearson", "spearman", "mse"} <= set(best)
    lines = (tmp_path / "out" / "predictions_dev.tsv").read_text().splitlines()
    assert lines[1].split("\t")[2] == "5"  # the gold score, printed as a number


def test_mnli_evaluates_matched_and_mismatched(tmp_path, tiny_model, write_tsv):
    header = ["index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1", "sentence2",
              "label1", "gold_label"]
    rows = [(i, 0, 0, "g", "", "", "", "", "the cat sat", hyp, lab, lab)
            for i, (hyp, lab) in enumerate([("a cat sat", "entailment"), ("no cat sat", "contradiction"),
                                            ("the cat was black", "neutral")])]
    for name in ("train", "dev_matched", "dev_mismatched"):
        write_tsv(tmp_path / f"{name}.tsv", header, rows)
    best = run(tmp_path, task="mnli", data_dir=str(tmp_path), model=tiny_model, max_steps=2)
    assert "accuracy" in best and "dev_mismatched/accuracy" in best
    assert (tmp_path / "out" / "predictions_dev_matched.tsv").is_file()
    assert (tmp_path / "out" / "predictions_dev_mismatched.tsv").is_file()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_custom_task_from_csv_and_jsonl(tmp_path, tiny_model, suffix):
    rows = [("how do i reset my password", "account"), ("my card was charged twice", "billing"),
            ("the app crashes on start", "bug"), ("change the email on my account", "account"),
            ("refund for last month", "billing"), ("button does nothing when pressed", "bug")]
    for name in ("train", "dev"):
        path = tmp_path / f"{name}{suffix}"
        if suffix == ".csv":
            path.write_text("text,intent\n" + "".join(f'"{t}",{y}\n' for t, y in rows))
        else:
            path.write_text("".join(json.dumps({"text": t, "intent": y}) + "\n" for t, y in rows))
    best = run(tmp_path, task="custom", train=str(tmp_path / f"train{suffix}"), dev=str(tmp_path / f"dev{suffix}"),
               text_cols="text", label_col="intent", model=tiny_model, max_steps=3)
    assert {"accuracy", "f1_macro", "mcc"} <= set(best)
    stored = json.loads((tmp_path / "out" / "best" / "config.json").read_text())
    assert stored["finetune"]["labels"] == ["account", "billing", "bug"]
    assert stored["config"]["num_labels"] == 3


def test_custom_regression_keeps_the_lowest_mse(tmp_path, tiny_model, write_tsv):
    rows = [(f"item number {i}", i / 10) for i in range(8)]
    write_tsv(tmp_path / "train.tsv", ["text", "y"], rows)
    write_tsv(tmp_path / "dev.tsv", ["text", "y"], rows)
    best = run(tmp_path, task="custom", data_dir=str(tmp_path), text_cols="text", label_col="y", regression=True,
               model=tiny_model, max_steps=4, eval_interval=1, metric_for_best="mse")
    history = [json.loads(line) for line in (tmp_path / "out" / "eval.jsonl").read_text().splitlines()]
    assert best["mse"] == min(h["mse"] for h in history)


def test_ner_conll_entity_f1_and_predictions(tmp_path, tiny_model, conll_files):
    best = run(tmp_path, task="ner", data_dir=str(conll_files), model=tiny_model, epochs=2)
    assert {"f1", "precision", "recall", "accuracy"} <= set(best)
    stored = json.loads((tmp_path / "out" / "best" / "config.json").read_text())
    assert stored["finetune"]["labels"] == ["O", "B-LOC", "B-ORG", "B-PER", "I-ORG", "I-PER"]
    sentences = (tmp_path / "out" / "predictions_dev.txt").read_text().strip().split("\n\n")
    assert len(sentences) == 2
    assert sentences[0].splitlines()[0].split()[:2] == ["John", "B-PER"]  # word, gold, predicted
    assert all(len(line.split()) == 3 for s in sentences for line in s.splitlines())


@pytest.mark.parametrize("task", ["squad", "squad2"])
def test_squad_windows_and_official_outputs(tmp_path, tiny_model, squad_file, task):
    # max_seq_length 32 forces the long paragraph into several windows 8 tokens apart.
    best = run(tmp_path, task=task, train=str(squad_file), dev=str(squad_file), model=tiny_model,
               max_seq_length=32, doc_stride=8, max_steps=3)
    assert {"exact", "f1"} <= set(best)
    predictions = json.loads((tmp_path / "out" / "predictions_dev.json").read_text())
    assert set(predictions) == {"q1", "q2", "q3", "q4"}
    long_context = json.loads(squad_file.read_text())["data"][0]["paragraphs"][1]["context"]
    assert predictions["q3"] == "" or predictions["q3"] in long_context
    if task == "squad2":
        odds = json.loads((tmp_path / "out" / "null_odds_dev.json").read_text())
        assert set(odds) == set(predictions)
        assert {"HasAns_f1", "NoAns_f1", "best_f1", "best_f1_thresh"} <= set(best)


def test_race_multiple_choice(tmp_path, tiny_model, race_files):
    best = run(tmp_path, task="race", data_dir=str(race_files), model=tiny_model, max_steps=2)
    assert 0.0 <= best["accuracy"] <= 1.0
    lines = (tmp_path / "out" / "predictions_dev.tsv").read_text().splitlines()
    assert lines[0] == "id\tprediction\tlabel" and lines[1].startswith("d1-0\t") and lines[1].endswith("\tA")
    assert len(lines) == 4


def test_command_line_with_sift_and_accumulation(tmp_path, tiny_model, sentiment_files):
    out = tmp_path / "out"
    code = main(["--task", "sst-2", "--data_dir", str(sentiment_files), "--model", tiny_model,
                 "--output_dir", str(out), "--max_steps", "2", "--batch_size", "2",
                 "--gradient_accumulation_steps", "2", "--sift", "--no-progress_bar", "--precision", "bf16"])
    assert code == 0
    assert "accuracy" in results(tmp_path)
    config = json.loads((out / "finetune_config.json").read_text())
    assert config["run"]["sift"] is True and config["engine"]["precision"] == "bf16"
    assert config["engine"]["micro_batch_size"] == 2 and config["engine"]["grad_accum"] == 2
    assert list((out / "tensorboard").iterdir())


def test_model_converted_from_transformers(tmp_path, hf_converted_model, sentiment_files):
    best = run(tmp_path, task="sst-2", data_dir=str(sentiment_files), model=hf_converted_model, max_steps=2)
    assert "accuracy" in best


def test_finetuned_model_finetunes_again(tmp_path, tiny_model, sentiment_files):
    """best/ is a model folder like any other: its head is kept when the task matches."""
    run(tmp_path, task="sst-2", data_dir=str(sentiment_files), model=tiny_model, max_steps=2)
    first = results(tmp_path)
    again = tmp_path / "again"
    again.mkdir()
    best = run(again, task="sst-2", data_dir=str(sentiment_files), model=str(tmp_path / "out" / "best"),
               max_steps=1, lr=1e-9)
    assert best["accuracy"] == pytest.approx(first["accuracy"])


def test_rte_sentence_pairs_from_shared_data(tmp_path, tiny_model, shared_data):
    best = run(tmp_path, task="rte", data_dir=str(shared_data / "glue" / "RTE"), model=tiny_model, max_steps=3,
               max_train_examples=48, max_eval_examples=40, max_seq_length=128)
    assert "accuracy" in best
    lines = (tmp_path / "out" / "predictions_dev.tsv").read_text().splitlines()
    assert len(lines) == 41 and lines[1].split("\t")[1] in ("entailment", "not_entailment")


def test_conll2000_chunking_from_shared_data(tmp_path, tiny_model, shared_data):
    train = shared_data / "conll2000" / "train.txt"
    best = run(tmp_path, task="ner", train=str(train), dev=str(train), model=tiny_model, max_steps=2,
               max_train_examples=32, max_eval_examples=16)
    assert 0.0 <= best["f1"] <= 100.0
    labels = json.loads((tmp_path / "out" / "best" / "config.json").read_text())["finetune"]["labels"]
    assert labels[0] == "O" and "B-NP" in labels and "I-NP" in labels


def test_early_stopping_after_evaluations_without_improvement(tmp_path, tiny_model, sentiment_files):
    # A vanishing learning rate leaves the metric where it is: the second evaluation is stale.
    run(tmp_path, task="sst-2", data_dir=str(sentiment_files), model=tiny_model, max_steps=10, eval_interval=1,
        lr=1e-12, early_stopping_patience=1)
    history = (tmp_path / "out" / "eval.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in history] == [1, 2]


def test_same_seed_same_results(tmp_path, tiny_model, sentiment_files):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    results_a = run(first, task="sst-2", data_dir=str(sentiment_files), model=tiny_model, max_steps=3, seed=7)
    results_b = run(second, task="sst-2", data_dir=str(sentiment_files), model=tiny_model, max_steps=3, seed=7)
    assert results_a == results_b


def test_cola_headerless_files_and_mcc(tmp_path, tiny_model):
    """CoLA's train/dev files have no header (source, label, original label, sentence)."""
    rows = ["gj04\t1\t\tthe cat sat on the mat .", "gj04\t0\t*\tcat the mat on sat the .",
            "gj04\t1\t\tshe reads books .", "gj04\t0\t*\tbooks she reads reads ."]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "test.tsv").write_text("index\tsentence\n0\tthe dog ran .\n1\tran dog the .\n")
    best = run(tmp_path, task="cola", data_dir=str(tmp_path), model=tiny_model, max_steps=2)
    assert {"mcc", "accuracy"} <= set(best) and -1.0 <= best["mcc"] <= 1.0
    assert (tmp_path / "out" / "CoLA.tsv").read_text().splitlines()[0] == "index\tprediction"
