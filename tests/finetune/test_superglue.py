"""SuperGLUE: every task end to end on small files we wrote in its official JSON-lines
layout, the leaderboard's submission files, the metrics against hand-worked values,
the marked spans, and bad lines named by file and line."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from deberta import load_tokenizer
from finetune import FinetuneConfig
from finetune.data import DataError, Row
from finetune.main import main
from finetune.tasks import build_task
from finetune.tasks.superglue import mark_spans, word_span
from finetune.tasks.superglue_metrics import gender_parity, multirc_metrics, record_metrics, record_token_f1

SPM_MODEL = Path(__file__).resolve().parents[1] / "assets" / "spm.model"


def span_of(text, part, occurrence=0):
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(part, start + 1)
    return start, start + len(part)


def boolq(i, label):
    passages = [("the sky on a clear day looks blue", "is the sky blue on a clear day"),
                ("ice melts when it is warmer than zero degrees", "does ice stay frozen in a warm room")]
    passage, question = passages[i % 2]
    return {"question": question, "passage": passage, "idx": i, "label": label}


def cb(i, label):
    hypothesis = f"the film was {['good', 'bad', 'long'][i % 3]}"
    return {"premise": "she said that the film was good", "hypothesis": hypothesis, "label": label, "idx": i}


def copa(i, label):
    pairs = [("the man broke his toe", "cause", "he dropped a hammer on his foot", "he got a hole in his sock"),
             ("i tipped the bottle", "effect", "the milk poured out", "the milk went sour")]
    premise, question, right, wrong = pairs[i % 2]
    choices = (right, wrong) if label == 0 else (wrong, right)
    return {"premise": premise, "choice1": choices[0], "choice2": choices[1], "question": question, "idx": i,
            "label": label}


def multirc(i, labelled=True):
    text = "Tom has a red bike . He rides it to school . His sister walks ."
    questions = [("what colour is the bike", [("red", 1), ("blue", 0), ("it is red", 1)]),
                 ("who walks", [("his sister", 1), ("tom", 0)])]
    return {"idx": i, "version": 1.1, "passage": {"text": text, "questions": [
        {"question": q, "idx": 10 * i + k,
         "answers": [{"text": a, "idx": 100 * i + 10 * k + j, **({"label": y} if labelled else {})}
                     for j, (a, y) in enumerate(answers)]}
        for k, (q, answers) in enumerate(questions)]}}


def record(i, labelled=True):
    text = "Barack Obama met Angela Merkel in Berlin .\n@highlight\nObama visited Berlin"
    entities = [span_of(text, "Barack Obama"), span_of(text, "Angela Merkel"), span_of(text, "Berlin"),
                span_of(text, "Obama", 1), span_of(text, "Berlin", 1)]
    qas = [{"query": "@placeholder hosted the visit", "idx": f"{i}-0",
            **({"answers": [{"start": entities[1][0], "end": entities[1][1] - 1, "text": "Angela Merkel"}]}
               if labelled else {})},
           {"query": "the meeting took place in @placeholder", "idx": f"{i}-1",
            **({"answers": [{"start": entities[2][0], "end": entities[2][1] - 1, "text": "Berlin"}]}
               if labelled else {})}]
    return {"source": "news", "idx": i, "qas": qas,
            "passage": {"text": text, "entities": [{"start": s, "end": e - 1} for s, e in entities]}}


def rte(i, label):
    return {"premise": "a dog runs in the park", "hypothesis": ["an animal runs", "a cat sleeps"][i % 2],
            "label": label, "idx": i}


def wic(i, label):
    s1, s2 = ["he sat on the bank of the river", "the bank raised its rates"][i % 2], "she works at the bank"
    (a1, b1), (a2, b2) = span_of(s1, "bank"), span_of(s2, "bank")
    return {"word": "bank", "sentence1": s1, "sentence2": s2, "start1": a1, "end1": b1, "start2": a2, "end2": b2,
            "idx": i, "label": label, "version": 1.1}


def wsc(i, label):
    text = "The trophy does not fit into the suitcase because it is too big."
    span1 = ["The trophy", "the suitcase"][i % 2]
    return {"text": text, "idx": i, "label": label,
            "target": {"span1_index": [0, 6][i % 2], "span1_text": span1, "span2_index": 9, "span2_text": "it"}}


def axb(i, label):
    return {"sentence1": "the cat sat on the mat", "sentence2": ["a cat sat", "no cat sat"][i % 2], "label": label,
            "idx": i, "logic": "Negation"}


def axg(i, label):
    pronoun = ["his", "her"][i % 2]
    return {"premise": f"the accountant met the client to discuss {pronoun} taxes", "label": label, "idx": i,
            "hypothesis": "the client has taxes", "pair_id": 500 + i // 2}


LABELS = {"boolq": [True, False], "cb": ["entailment", "contradiction", "neutral"], "copa": [0, 1],
          "superglue-rte": ["entailment", "not_entailment"], "wic": [False, True], "wsc": [True, False]}
MAKERS = {"boolq": ("BoolQ", boolq), "cb": ("CB", cb), "copa": ("COPA", copa), "superglue-rte": ("RTE", rte),
          "wic": ("WiC", wic), "wsc": ("WSC", wsc)}
SUBMITTED = {"boolq": {"true", "false"}, "cb": {"entailment", "contradiction", "neutral"}, "copa": {0, 1},
             "superglue-rte": {"entailment", "not_entailment"}, "wic": {"true", "false"}, "wsc": {"True", "False"},
             "ax-b": {"entailment", "not_entailment"}, "ax-g": {"entailment", "not_entailment"}}


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def write_task(root, task):
    """The official download's folder for ``task``; returns (data_dir, test lines, folder name)."""
    if task in ("multirc", "record"):
        make, name = (multirc, "MultiRC") if task == "multirc" else (record, "ReCoRD")
        folder = root / name
        write_jsonl(folder / "train.jsonl", [make(i) for i in range(3)])
        write_jsonl(folder / "val.jsonl", [make(i) for i in range(2)])
        write_jsonl(folder / "test.jsonl", [make(i, labelled=False) for i in range(2)])
        return folder, 2 if task == "multirc" else 4, name  # paragraphs / queries
    rte_like = task in ("ax-b", "ax-g")
    name, make = MAKERS["superglue-rte" if rte_like else task]
    labels = LABELS["superglue-rte" if rte_like else task]
    folder = root / name
    rows = [make(i, labels[i % len(labels)]) for i in range(6)]
    write_jsonl(folder / "train.jsonl", rows * 2)
    write_jsonl(folder / "val.jsonl", rows)
    write_jsonl(folder / "test.jsonl", [{k: v for k, v in r.items() if k != "label"} for r in rows[:4]])
    if task in ("superglue-rte", "ax-b", "ax-g"):
        nli = LABELS["superglue-rte"]
        write_jsonl(root / "AX-b" / "AX-b.jsonl", [axb(i, nli[i % 2]) for i in range(4)])
        # Labelled for its own task; the RTE run gets an unlabelled copy (a pure test set).
        axg_rows = [axg(i, nli[i // 2 % 2]) for i in range(4)]
        if task == "superglue-rte":
            axg_rows = [{k: v for k, v in r.items() if k != "label"} for r in axg_rows]
        write_jsonl(root / "AX-g" / "AX-g.jsonl", axg_rows)
    return folder, 4, name


MAIN_METRICS = {"boolq": ["accuracy"], "cb": ["f1_macro", "accuracy"], "copa": ["accuracy"],
                "multirc": ["f1a", "em"], "record": ["f1", "em"], "superglue-rte": ["accuracy", "ax-b/mcc"],
                "wic": ["accuracy"], "wsc": ["accuracy"], "ax-b": ["accuracy", "ax-b/mcc", "ax-b/accuracy"],
                "ax-g": ["accuracy", "ax-g/gender_parity", "ax-g/accuracy"]}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("task", sorted(MAIN_METRICS))
def test_task_end_to_end_writes_metrics_and_submission(tmp_path, tiny_model, task):
    data_dir, n_test, name = write_task(tmp_path / "data", task)
    out = tmp_path / "out"
    code = main(["--task", task, "--data_dir", str(data_dir), "--model", tiny_model, "--output_dir", str(out),
                 "--max_steps", "1", "--micro_batch_size", "4", "--max_seq_length", "48", "--no-progress_bar",
                 "--no-tensorboard", "--lr", "1e-3"])
    assert code == 0
    results = json.loads((out / "eval_results.json").read_text())
    for metric in MAIN_METRICS[task]:
        assert 0.0 <= results[metric] <= 1.0 or (metric.endswith("mcc") and -1 <= results[metric] <= 1)
    assert (out / "predictions_dev.jsonl").is_file()
    assert len(read_jsonl(out / f"{name}.jsonl")) == n_test  # the test split's submission
    if task in ("ax-b", "ax-g"):
        name = {"ax-b": "AX-b", "ax-g": "AX-g"}[task]
    submission = read_jsonl(out / f"{name}.jsonl")
    if task == "multirc":  # paragraph > questions > answers, each with its idx
        assert [p["idx"] for p in submission] == [0, 1]
        questions = submission[1]["passage"]["questions"]
        assert [q["idx"] for q in questions] == [10, 11]
        assert [a["idx"] for a in questions[0]["answers"]] == [100, 101, 102]
        assert {a["label"] for p in submission for q in p["passage"]["questions"] for a in q["answers"]} <= {0, 1}
    elif task == "record":  # the query idx and an entity of its passage
        assert [s["idx"] for s in submission] == ["0-0", "0-1", "1-0", "1-1"]
        assert {s["label"] for s in submission} <= {"Barack Obama", "Angela Merkel", "Berlin", "Obama"}
    else:
        assert [s["idx"] for s in submission] == list(range(n_test))
        assert {s["label"] for s in submission} <= SUBMITTED[task] and set(submission[0]) == {"idx", "label"}
    if task == "superglue-rte":  # the RTE model's diagnostics, labelled (scored) and not
        assert len(read_jsonl(out / "AX-b.jsonl")) == 4 and len(read_jsonl(out / "AX-g.jsonl")) == 4
        assert "ax-g/accuracy" not in results
    stored = json.loads((out / "best" / "config.json").read_text())["finetune"]
    assert stored["task"] == task


@pytest.mark.slow
@pytest.mark.parametrize("task, epochs", [("record", 40), ("multirc", 20)])
def test_candidate_tasks_learn_their_small_set(tmp_path, tiny_model, task, epochs):
    """Scored per candidate and grouped back, the answers come out right once the model has
    learned the (training = dev) examples: every query / question exactly right."""
    data_dir, _, _ = write_task(tmp_path / "data", task)
    (data_dir / "test.jsonl").unlink()
    (data_dir / "val.jsonl").write_text((data_dir / "train.jsonl").read_text())
    out = tmp_path / "out"
    assert main(["--task", task, "--data_dir", str(data_dir), "--model", tiny_model, "--output_dir", str(out),
                 "--epochs", str(epochs), "--micro_batch_size", "4", "--max_seq_length", "64", "--lr", "3e-3",
                 "--warmup_ratio", "0", "--no-progress_bar", "--no-tensorboard", "--no-save_best"]) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert results["em"] == 1.0, results


# --- metrics, worked by hand ----------------------------------------------------------------
def test_multirc_f1a_and_exact_match_by_hand():
    # Question 1: gold 1 0 1, predicted 1 1 1 (one false positive); question 2 all right.
    # Pooled: TP 3, FP 1, FN 0 -> F1a = 2*3 / (2*3 + 1 + 0) = 6/7; EM = 1 of 2 questions.
    scores = multirc_metrics([[1, 1, 1], [0, 1]], [[1, 0, 1], [0, 1]])
    assert scores["f1a"] == pytest.approx(6 / 7) and scores["em"] == 0.5
    # A missed answer: TP 2, FP 0, FN 1 -> 4/5; no question fully right.
    scores = multirc_metrics([[1, 0, 0], [1, 1]], [[1, 0, 1], [0, 1]])
    assert scores["f1a"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1)) and scores["em"] == 0.0


def test_record_token_f1_and_exact_match_by_hand():
    # "President Obama" vs "Barack Obama": 1 common token of 2 and 2 -> P = R = 1/2, F1 = 1/2;
    # vs "Obama": P = 1/2, R = 1 -> F1 = 2/3. The best gold counts: 2/3, no exact match.
    assert record_token_f1("President Obama", "Barack Obama") == pytest.approx(0.5)
    assert record_token_f1("President Obama", "Obama") == pytest.approx(2 / 3)
    # Normalisation: case, punctuation and articles go ("The U.S." == "us").
    scores = record_metrics(["President Obama", "The U.S.", "Paris"], [["Barack Obama", "Obama"], ["US"], ["Rome"]])
    assert scores["f1"] == pytest.approx((2 / 3 + 1 + 0) / 3) and scores["em"] == pytest.approx(1 / 3)
    assert record_token_f1("the", "a") == 0.0  # both empty after normalisation: no F1 (record_eval.py)


def test_gender_parity_by_hand():
    # Pairs 1 and 3 agree, pair 2 does not: 2/3.
    assert gender_parity([0, 0, 1, 0, 1, 1], [7, 7, 8, 8, 9, 9]) == pytest.approx(2 / 3)


# --- scoring grouped candidates, with outputs we choose ---------------------------------------
def make_task(task, data_dir, **fields):
    config = FinetuneConfig.create(task=task, data_dir=str(data_dir), model="unused", output_dir="unused",
                                   **{"max_seq_length": 64, **fields}).run
    return build_task(config, load_tokenizer(SPM_MODEL))


def test_record_picks_the_candidate_with_the_highest_log_odds(tmp_path):
    folder, _, _ = write_task(tmp_path, "record")
    task = make_task("record", folder)
    split = task.load("dev", folder / "val.jsonl", labelled=True)
    # Distinct entity texts, first mention first: "Obama" once though mentioned twice... and "Berlin" once.
    assert split.examples[0].candidates == ["Barack Obama", "Angela Merkel", "Berlin", "Obama"]
    assert len(split.features) == 4 * 4 and [f["labels"] for f in split.features[:4]] == [0, 1, 0, 0]
    favourite = {0: 1, 1: 2, 2: 3, 3: 2}  # query -> candidate given the best odds
    outputs = [np.array([0.0, 5.0 if favourite[q] == c else float(c) / 10]) for q in range(4) for c in range(4)]
    metrics, predicted = task.score(split, outputs)
    assert predicted == ["Angela Merkel", "Berlin", "Obama", "Berlin"]
    # Query 3 ("Obama" for "Angela Merkel") scores 0; the others are exact.
    assert metrics["em"] == pytest.approx(3 / 4) and metrics["f1"] == pytest.approx(3 / 4)


def test_multirc_groups_options_by_question(tmp_path):
    folder, _, _ = write_task(tmp_path, "multirc")
    task = make_task("multirc", folder)
    split = task.load("dev", folder / "val.jsonl", labelled=True)
    assert [len(q.answer_ids) for q in split.examples] == [3, 2, 3, 2]
    # Gold per question: 1 0 1 | 1 0, twice. Predict "yes" everywhere: TP 6, FP 4 -> F1a 12/16.
    metrics, predicted = task.score(split, [np.array([0.0, 1.0])] * 10)
    assert predicted[0] == [1, 1, 1] and metrics["f1a"] == pytest.approx(12 / 16) and metrics["em"] == 0.0


# --- marked spans ---------------------------------------------------------------------------
def test_wic_marks_the_target_in_each_sentence(tmp_path):
    folder, _, _ = write_task(tmp_path, "wic")
    first, second = make_task("wic", folder).texts(folder / "val.jsonl", Row(wic(0, True), 1), "dev")
    assert first == "he sat on the * bank * of the river" and second == "she works at the * bank *"


def test_wsc_spans_from_word_indices():
    text = "The trophy does not fit into the suitcase because it is too big."
    assert word_span(text, 0, "The trophy") == (0, 10)
    pronoun = text.index(" it ") + 1
    assert word_span(text, 9, "it") == (pronoun, pronoun + 2)
    assert word_span(text, 3, "it") == word_span(text, 9, "it")  # an index off by some words: the nearest
    assert word_span("He saw him.", 2, "him") == (7, 10)  # the full stop stays outside
    assert word_span(text, 0, "the cupboard") is None
    marked = mark_spans(text, [(0, 10, "*"), (*word_span(text, 9, "it"), "#")])
    assert marked == "* The trophy * does not fit into the suitcase because # it # is too big."
    # Nested spans ("his" inside "his mother"): the outer opens first, the inner closes first.
    assert mark_spans("his mother saw him", [(0, 10, "*"), (0, 3, "#")]) == "* # his # mother * saw him"


# --- bad input ------------------------------------------------------------------------------
def test_unknown_label_names_file_and_line(tmp_path, tiny_model):
    folder, _, _ = write_task(tmp_path, "cb")
    lines = (folder / "val.jsonl").read_text().splitlines()
    lines[2] = json.dumps({**json.loads(lines[2]), "label": "maybe"})
    (folder / "val.jsonl").write_text("\n".join(lines) + "\n")
    task = make_task("cb", folder)
    with pytest.raises(DataError, match=r"val\.jsonl, line 3: label 'maybe' is not one of \['entailment', "):
        task.load("dev", folder / "val.jsonl", labelled=True)


@pytest.mark.parametrize("task, breaks, message", [
    ("wsc", lambda r: r["target"].pop("span2_text"), r"line 2: no field 'target\.span2_text'"),
    ("wsc", lambda r: r["target"].update(span1_index="first"), r"line 2: target\.span1_index 'first' is not a word"),
    ("wsc", lambda r: r.pop("target"), r"line 2: no value in column 'target'"),
    ("cb", lambda r: r.pop("label"), r"line 2: no value in column 'label'"),
    ("wsc", lambda r: r["target"].update(span1_text="the cupboard"), r"line 2: target\.span1_text 'the cupboard'"),
    ("wic", lambda r: r.update(end1=99), r"line 2: start1/end1 \(\d+, 99\) are not a span of sentence1"),
    ("boolq", lambda r: r.pop("passage"), r"line 2: no value in column 'passage'"),
    ("copa", lambda r: r.update(question="why"), r"line 2: question 'why' is not 'cause' or 'effect'"),
    ("copa", lambda r: r.update(label=True), r"line 2: label True is not one of \[0, 1\]"),
    ("multirc", lambda r: r["passage"]["questions"][1]["answers"][0].pop("label"),
     r"line 2: no field 'passage\.questions\[1\]\.answers\[0\]\.label'"),
    ("record", lambda r: r["qas"][0].update(query="no blank here"), r"line 2: qas\[0\]\.query has no @placeholder"),
    ("record", lambda r: r["passage"]["entities"][0].update(end=999),
     r"line 2: passage\.entities\[0\] \(0, 999\) is not a span of the passage"),
])
def test_bad_lines_name_file_line_and_field(tmp_path, task, breaks, message):
    folder, _, _ = write_task(tmp_path, task)
    rows = read_jsonl(folder / "val.jsonl")
    breaks(rows[1])
    write_jsonl(folder / "val.jsonl", rows)
    with pytest.raises(DataError, match=r"val\.jsonl, " + message):
        make_task(task, folder).load("dev", folder / "val.jsonl", labelled=True)


def test_diagnostic_task_without_its_file_says_where_it_looked(tmp_path):
    folder, _, _ = write_task(tmp_path, "ax-b")
    (tmp_path / "AX-b" / "AX-b.jsonl").unlink()
    with pytest.raises(DataError, match=r"AX-b\.jsonl not found .*give --test"):
        make_task("ax-b", folder).eval_files()
    files = make_task("superglue-rte", folder).eval_files()  # optional for RTE itself
    assert set(files) == {"dev", "ax-g"}  # AX-g is still there, labelled: evaluated


# --- recipes ----------------------------------------------------------------------------------
OFFICIAL_REPO = Path("/work/.mirror/microsoft+DeBERTa/repo")


def official_cases(script_text):
    """Each case block of an official script as its --flag value pairs (--fp16, --do_train left out)."""
    cases = {}
    for case, block in re.findall(r"^\s*([\w.-]+)\)\s*$(.*?)^\s*;;", script_text, re.M | re.S):
        pairs = re.findall(r"(--\w+)\s+([^\s\\\"]+)", block.replace("--do_train", ""))
        cases[case] = sorted((flag, value) for flag, value in pairs if flag != "--fp16")
    return {case: pairs for case, pairs in cases.items() if pairs}  # the usage branch (*) has none


@pytest.mark.skipif(not OFFICIAL_REPO.exists(), reason="the official repository is not mirrored here")
def test_copa_and_record_recipes_hold_every_case_of_their_scripts():
    import subprocess

    from finetune.tasks.superglue_recipes import COPA, RECORD
    for script in (COPA, RECORD):
        text = subprocess.run(["git", "-C", str(OFFICIAL_REPO), "show", f"HEAD:{script.path}"], check=True,
                              capture_output=True, text=True).stdout
        ours = {case: sorted(zip(line.split()[::2], line.split()[1::2])) for case, line in script.cases.items()}
        assert ours == official_cases(text), script.path
        assert re.search(rf"^\s*{re.escape(script.common)} \\$", text, re.M), script.common


def test_recipes_official_where_a_script_exists_ours_elsewhere():
    from finetune.recipes import CATALOGUE, choose
    record = CATALOGUE["record/deberta-v3-large"]
    assert {k: record.values[k] for k in ("epochs", "warmup_steps", "lr", "global_batch_size", "cls_dropout",
                                          "max_seq_length")} == {"epochs": 3.0, "warmup_steps": 500, "lr": 7e-6,
                                                                 "global_batch_size": 64, "cls_dropout": 0.1,
                                                                 "max_seq_length": 512}
    assert "experiments/superglue/record.sh (case deberta-v3-large)" in str(record.sources["lr"])
    assert record.values["adam_bias_correction"] is False  # the official runner's defaults hold
    assert CATALOGUE["record/xxlarge-v2"].values["grad_accum"] == 2
    copa = CATALOGUE["copa/large"]
    assert copa.values["lr"] == 5e-6 and copa.values["max_seq_length"] == 136 and copa.starts_from[0] == "mnli"
    lent = CATALOGUE["copa/deberta-v3-large"]
    assert str(lent.sources["lr"]).startswith("our choice: experiments/superglue/copa.sh has no deberta-v3-large")
    assert lent.starts_from is None
    # No script: a GLUE task's recipe, every value the same and marked ours.
    boolq, qnli = CATALOGUE["boolq/deberta-v3-large"], CATALOGUE["qnli/deberta-v3-large"]
    assert boolq.values == qnli.values and boolq.values["max_seq_length"] == 512
    assert str(boolq.sources["lr"]).startswith("our choice: boolq has no official script")
    assert CATALOGUE["xnli/deberta-v3-base"].values == CATALOGUE["mnli/deberta-v3-base"].values
    assert CATALOGUE["cb/large"].starts_from[0] == "mnli"  # as RTE's large case
    for task in ("boolq", "cb", "copa", "multirc", "record", "superglue-rte", "wic", "wsc", "ax-b", "ax-g", "xnli",
                 "anli", "anli-r1", "anli-r2", "anli-r3"):
        assert f"{task}/deberta-v3-large" in CATALOGUE and f"{task}/base" in CATALOGUE, task
    assert choose("auto", "copa", None)[0] is None  # picking still needs a model (tested in test_finetune_recipes.py)


@pytest.mark.parametrize("rule", ["longest_first", "official"])
def test_pair_truncation_follows_the_flag(tmp_path, rule):
    """Over --max_seq_length a pair loses tokens of its longest text: the end (longest
    first), or either end at random (official, as the GLUE tasks)."""
    passage = " ".join(f"w{i}" for i in range(40))
    write_jsonl(tmp_path / "val.jsonl", [{"passage": passage, "question": "is it", "idx": 0, "label": True}])
    task = make_task("boolq", tmp_path, pair_truncation=rule, max_seq_length=16)
    ids = task.load("dev", tmp_path / "val.jsonl", labelled=True).features[0]["input_ids"]
    full, question = task.tokenizer.encode(passage), task.tokenizer.encode("is it")
    kept = ids[1:len(ids) - len(question) - 2]
    assert len(ids) == 16 and ids[-len(question) - 1:-1] == question
    start = next(i for i in range(len(full)) if full[i:i + len(kept)] == kept)  # a stretch of the passage
    assert (start == 0) == (rule == "longest_first")
