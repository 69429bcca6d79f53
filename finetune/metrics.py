"""Metrics as the benchmarks define them.

Classification: accuracy, F1 of the positive class (MRPC, QQP), macro F1, Matthews
correlation (CoLA). Regression: Pearson and Spearman (STS-B, Spearman with average ranks
for ties). SQuAD: exact match and token F1 after the official answer normalisation, with
SQuAD 2.0's "no answer" rules and its best-threshold search. NER: entity-level precision,
recall and F1 over chunks, read from BIO / IOB1 / IOBES tags the way conlleval reads them.
"""
from __future__ import annotations

import collections
import math
import re
import string
from typing import Iterable, Sequence

import numpy as np


# ---------------------------------------------------------------------------------------
# Classification and regression
# ---------------------------------------------------------------------------------------
def accuracy(predictions: Sequence, labels: Sequence) -> float:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float((predictions == labels).mean()) if len(labels) else 0.0


def _confusion(predictions, labels, positive) -> tuple[int, int, int]:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    true_pos = int(((predictions == positive) & (labels == positive)).sum())
    false_pos = int(((predictions == positive) & (labels != positive)).sum())
    false_neg = int(((predictions != positive) & (labels == positive)).sum())
    return true_pos, false_pos, false_neg


def _f1_from_counts(true_pos: int, false_pos: int, false_neg: int) -> float:
    # 2TP / (2TP + FP + FN) is precision/recall's harmonic mean, defined as 0 when empty.
    denominator = 2 * true_pos + false_pos + false_neg
    return 2 * true_pos / denominator if denominator else 0.0


def f1_binary(predictions: Sequence, labels: Sequence, positive=1) -> float:
    """F1 of the positive class, the GLUE definition for MRPC and QQP."""
    return _f1_from_counts(*_confusion(predictions, labels, positive))


def f1_macro(predictions: Sequence, labels: Sequence) -> float:
    """Unweighted mean of the per-class F1 over the classes present in labels or predictions."""
    classes = sorted(set(np.asarray(labels).tolist()) | set(np.asarray(predictions).tolist()))
    if not classes:
        return 0.0
    return float(np.mean([_f1_from_counts(*_confusion(predictions, labels, c)) for c in classes]))


def matthews_corrcoef(predictions: Sequence, labels: Sequence) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K); 0 when either side is constant."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    classes = sorted(set(labels.tolist()) | set(predictions.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    for p, t in zip(predictions.tolist(), labels.tolist()):
        confusion[index[t], index[p]] += 1
    true_totals, predicted_totals = confusion.sum(1), confusion.sum(0)
    n, correct = confusion.sum(), np.trace(confusion)
    numerator = correct * n - true_totals @ predicted_totals
    denominator = math.sqrt((n * n - predicted_totals @ predicted_totals) * (n * n - true_totals @ true_totals))
    return float(numerator / denominator) if denominator else 0.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator else 0.0


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of the average ranks."""
    return pearson(_average_ranks(np.asarray(x, dtype=np.float64)), _average_ranks(np.asarray(y, dtype=np.float64)))


def classification_metrics(predictions, labels, names: Iterable[str]) -> dict[str, float]:
    available = {
        "accuracy": lambda: accuracy(predictions, labels),
        "f1": lambda: f1_binary(predictions, labels),
        "f1_macro": lambda: f1_macro(predictions, labels),
        "mcc": lambda: matthews_corrcoef(predictions, labels),
    }
    return {name: available[name]() for name in names}


def regression_metrics(predictions, labels) -> dict[str, float]:
    predictions, labels = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    return {"pearson": pearson(predictions, labels), "spearman": spearman(predictions, labels),
            "mse": float(((predictions - labels) ** 2).mean()) if len(labels) else 0.0}


# ---------------------------------------------------------------------------------------
# SQuAD 1.1 / 2.0
# ---------------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official normalisation: lower case, punctuation and articles removed, spaces collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    predicted_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted_tokens or not gold_tokens:  # SQuAD 2.0: "no answer" scores only against "no answer"
        return float(predicted_tokens == gold_tokens)
    common = collections.Counter(predicted_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: dict[str, str], golds: dict[str, list[str]],
                  no_answer_odds: dict[str, float] | None = None) -> dict[str, float]:
    """Scores in percent, as the official scripts print them.

    ``golds`` maps question id -> answer texts ([] for an unanswerable SQuAD 2.0 question,
    which only the empty prediction matches). With ``no_answer_odds`` (question id ->
    no-answer score minus best-span score), also the best exact / F1 over thresholds.
    """
    golds = {qid: (answers if [a for a in answers if normalize_answer(a)] else [""]) for qid, answers in golds.items()}
    exact = {qid: max(squad_exact(predictions.get(qid, ""), a) for a in answers) for qid, answers in golds.items()}
    f1 = {qid: max(squad_f1(predictions.get(qid, ""), a) for a in answers) for qid, answers in golds.items()}
    results = {"exact": 100.0 * np.mean(list(exact.values())) if golds else 0.0,
               "f1": 100.0 * np.mean(list(f1.values())) if golds else 0.0, "total": len(golds)}
    has_answer = [qid for qid, answers in golds.items() if answers != [""]]
    no_answer = [qid for qid, answers in golds.items() if answers == [""]]
    if no_answer:  # a SQuAD 2.0 set: the answerable / unanswerable breakdown
        for name, ids in (("HasAns", has_answer), ("NoAns", no_answer)):
            if ids:
                results[f"{name}_exact"] = 100.0 * np.mean([exact[q] for q in ids])
                results[f"{name}_f1"] = 100.0 * np.mean([f1[q] for q in ids])
                results[f"{name}_total"] = len(ids)
    if no_answer_odds is not None and golds:
        for name, scores in (("exact", exact), ("f1", f1)):
            best, threshold = _best_threshold(predictions, scores, no_answer_odds, set(no_answer))
            results[f"best_{name}"], results[f"best_{name}_thresh"] = best, threshold
    return {k: float(v) for k, v in results.items()}


def _best_threshold(predictions, scores, odds, unanswerable) -> tuple[float, float]:
    """Sweep the no-answer threshold over the observed odds: a question whose odds exceed
    the threshold is answered with "" (right exactly when it is unanswerable)."""
    # Start with every question answered "no answer": the unanswerable ones are right.
    current = best = float(len(unanswerable))
    best_threshold = 0.0
    for qid in sorted(scores, key=lambda q: odds.get(q, 0.0)):
        # Lowering the threshold past this question's odds switches it to its span answer.
        if qid in unanswerable:
            current += -1 if predictions.get(qid, "") else 0
        else:
            current += scores[qid]
        if current > best:
            best, best_threshold = current, odds.get(qid, 0.0)
    return 100.0 * best / len(scores), best_threshold


# ---------------------------------------------------------------------------------------
# NER: entity-level F1 (conlleval)
# ---------------------------------------------------------------------------------------
def _split_tag(tag: str) -> tuple[str, str]:
    if tag == "O" or "-" not in tag:
        return "O", ""
    prefix, _, entity = tag.partition("-")
    return prefix, entity


def _chunk_ends(prev_prefix, prev_type, prefix, entity) -> bool:
    if prev_prefix in ("E", "S"):
        return True
    if prev_prefix in ("B", "I"):
        return prefix in ("B", "S", "O") or entity != prev_type
    return False


def _chunk_starts(prev_prefix, prev_type, prefix, entity) -> bool:
    if prefix in ("B", "S"):
        return True
    if prefix in ("I", "E"):
        return prev_prefix in ("E", "S", "O") or entity != prev_type
    return False


def extract_entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, first, last) of every chunk; an I- after O or after another type starts one (IOB1)."""
    chunks, start = set(), None
    prev_prefix, prev_type = "O", ""
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, entity = _split_tag(tag)
        if start is not None and _chunk_ends(prev_prefix, prev_type, prefix, entity):
            chunks.add((prev_type, start, i - 1))
            start = None
        if _chunk_starts(prev_prefix, prev_type, prefix, entity):
            start = i
        prev_prefix, prev_type = prefix, entity
    return chunks


def entity_metrics(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro-averaged entity precision / recall / F1 in percent, and token accuracy."""
    correct = n_predicted = n_gold = 0
    tokens_right = tokens = 0
    for predicted_tags, gold_tags in zip(predicted, gold):
        if len(predicted_tags) != len(gold_tags):
            raise ValueError(f"a sentence has {len(gold_tags)} gold tags but {len(predicted_tags)} predictions")
        predicted_chunks, gold_chunks = extract_entities(predicted_tags), extract_entities(gold_tags)
        correct += len(predicted_chunks & gold_chunks)
        n_predicted += len(predicted_chunks)
        n_gold += len(gold_chunks)
        tokens_right += sum(p == g for p, g in zip(predicted_tags, gold_tags))
        tokens += len(gold_tags)
    precision = correct / n_predicted if n_predicted else 0.0
    recall = correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": 100 * precision, "recall": 100 * recall, "f1": 100 * f1,
            "accuracy": 100 * tokens_right / tokens if tokens else 0.0}
