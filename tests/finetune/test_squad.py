"""SQuAD pre- and post-processing on hand-made logits: windows, span targets, answers, no-answer."""
import numpy as np
import pytest

from deberta import load_tokenizer
from finetune import FinetuneConfig
from finetune.tasks import build_task


def squad_task(task, spm_model, **fields):
    config = FinetuneConfig.create(task=task, model="unused", output_dir="unused", train="unused",
                            **{"max_seq_length": 32, "doc_stride": 8, **fields})
    return build_task(config.run, load_tokenizer(spm_model))


def oracle_logits(split, answered=True):
    """Logits that point at each example's gold answer words; [CLS] wins where the example
    has no answer, or everywhere with ``answered=False``."""
    outputs = []
    for feature in split.features:
        example = split.examples[feature["_example"]]
        logits = np.zeros((len(feature["input_ids"]), 2), dtype=np.float32)
        if example.answer_words is not None:
            first, last = example.answer_words
            positions = [i for i, w in enumerate(feature["_token_word"]) if first <= w <= last]
            if positions:
                logits[positions[0], 0] = logits[positions[-1], 1] = 5.0
        if example.answer_words is None or not answered:
            logits[0] = 10.0
        outputs.append(logits)
    return outputs


def test_long_context_is_windowed_and_train_targets_hit_the_answer(spm_model, squad_file):
    task = squad_task("squad", spm_model)
    split = task.load("train", squad_file, labelled=True)
    windows = [f for f in split.features if split.examples[f["_example"]].qid == "q3"]
    assert len(windows) > 1 and all(len(f["input_ids"]) <= 32 for f in windows)
    tokenizer = task.tokenizer
    hits = [f for f in windows if f["start_positions"] > 0]
    assert hits, "the answer lies inside at least one window"
    for f in hits:
        span = f["input_ids"][f["start_positions"]:f["end_positions"] + 1]
        assert tokenizer.decode(span).strip() == "1850"
    assert all(f["start_positions"] == f["end_positions"] == 0 for f in windows if f not in hits)
    # Each context token is the max-context token of exactly one window.
    example = split.examples[windows[0]["_example"]]
    owners = {}
    for f in windows:
        for word, is_max in zip(f["_token_word"], f["_max_context"]):
            if is_max:
                owners[word] = owners.get(word, 0) + 1
    assert set(owners) == set(range(len(example.word_spans)))


def test_post_processing_recovers_gold_answers_v1(spm_model, squad_file):
    task = squad_task("squad", spm_model)
    split = task.load("dev", squad_file, labelled=True)
    metrics, (predictions, odds) = task.score(split, oracle_logits(split))
    assert predictions["q1"] == "1903" and predictions["q2"] == "Marie Curie" and predictions["q3"] == "1850"
    assert odds is None
    # q4 (unanswerable) counts as answerable with gold "" in a v1 file: only q1-q3 can score.
    assert metrics["exact"] == pytest.approx(100.0)


def test_squad2_no_answer_threshold(spm_model, squad_file):
    task = squad_task("squad2", spm_model)
    split = task.load("dev", squad_file, labelled=True)
    metrics, (predictions, odds) = task.score(split, oracle_logits(split))
    assert predictions["q4"] == "" and predictions["q1"] == "1903"
    assert metrics["exact"] == 100.0 and metrics["NoAns_exact"] == 100.0
    # Pointing every window at [CLS] makes every answer "no answer" ...
    _, (silent, _) = task.score(split, oracle_logits(split, answered=False))
    assert set(silent.values()) == {""}
    # ... unless the threshold exceeds the odds (null 20 - span 10): then the spans return.
    lenient = squad_task("squad2", spm_model, null_score_threshold=10.5)
    _, (spans, odds) = lenient.score(split, oracle_logits(split, answered=False))
    assert odds["q1"] == pytest.approx(10.0)
    assert (spans["q1"], spans["q2"], spans["q3"]) == ("1903", "Marie Curie", "1850")
