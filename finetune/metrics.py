"""Metrics as the benchmarks' official scorers compute them.

Classification: accuracy, F1 of the positive class 1 (MRPC, QQP), macro F1, Matthews
correlation (CoLA), as scikit-learn computes them for GLUE. Regression: Pearson and
Spearman (STS-B; average ranks for ties), as scipy computes them, except that a constant
side gives 0 instead of NaN. SQuAD: evaluate-v1.1.py and evaluate-v2.0.py, each with its
own rules, 2.0 with its HasAns / NoAns split and no-answer threshold sweep. NER:
conlleval's entity precision, recall and F1 (BIO / IOB1 tags; IOBES as seqeval reads them).
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
# SQuAD 1.1 (evaluate-v1.1.py) and SQuAD 2.0 (evaluate-v2.0.py)
# ---------------------------------------------------------------------------------------
# The two official scripts share the answer normalisation and exact match but differ
# elsewhere: 1.1 scores every listed answer and gives two empty answers F1 0; 2.0 drops
# the answers that normalise to nothing, scores a question left without any against "",
# and gives F1 1 when both sides are empty. Each version keeps its own rules below.
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official normalisation: lower case, punctuation and articles removed, spaces collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def _token_f1(predicted_tokens: list[str], gold_tokens: list[str]) -> float:
    common = collections.Counter(predicted_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0
    precision = 1.0 * overlap / len(predicted_tokens)
    recall = 1.0 * overlap / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def squad_v1_f1(prediction: str, gold: str) -> float:
    """evaluate-v1.1.py's token F1: no common token scores 0, two empty answers included."""
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(gold).split())


def squad_v2_f1(prediction: str, gold: str) -> float:
    """evaluate-v2.0.py's token F1: an empty side ("no answer") scores 1 only against another."""
    predicted_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted_tokens or not gold_tokens:
        return int(predicted_tokens == gold_tokens)
    return _token_f1(predicted_tokens, gold_tokens)


def _check_questions(golds: dict) -> None:
    if not golds:
        raise ValueError("no questions to score")


def squad_v1_metrics(predictions: dict[str, str], golds: dict[str, list[str]]) -> dict[str, float]:
    """evaluate-v1.1.py in percent: the best exact match and F1 over each question's answers.

    ``golds`` maps question id -> answer texts. A question without a prediction scores 0
    and still counts, as in the official script. A question without answers (an
    unanswerable one from a 2.0 file) is scored against the answer "" -- the official
    script cannot score it at all.
    """
    _check_questions(golds)
    exact = f1 = 0
    for qid, answers in golds.items():
        if qid not in predictions:
            continue
        answers = answers or [""]
        exact += max(squad_exact(predictions[qid], a) for a in answers)
        f1 += max(squad_v1_f1(predictions[qid], a) for a in answers)
    return {"exact": 100.0 * exact / len(golds), "f1": 100.0 * f1 / len(golds), "total": float(len(golds))}


def _squad_v2_raw_scores(predictions, golds) -> tuple[dict[str, int], dict[str, float]]:
    """Per question, exact and F1 of the prediction, before any no-answer threshold."""
    missing = [qid for qid in golds if qid not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} of {len(golds)} questions have no prediction (first: {missing[:5]}); "
                         f"SQuAD 2.0 scores every question, an unanswered one as \"\"")
    exact, f1 = {}, {}
    for qid, answers in golds.items():
        # Answers that normalise to nothing ("the", ".") are dropped; a question left with
        # none, unanswerable or not, is right only when the prediction is empty too.
        scorable = [a for a in answers if normalize_answer(a)] or [""]
        exact[qid] = max(squad_exact(predictions[qid], a) for a in scorable)
        f1[qid] = max(squad_v2_f1(predictions[qid], a) for a in scorable)
    return exact, f1


def _summary(exact: dict, f1: dict, qids: list[str]) -> dict[str, float]:
    return {"exact": 100.0 * sum(exact[q] for q in qids) / len(qids),
            "f1": 100.0 * sum(f1[q] for q in qids) / len(qids), "total": float(len(qids))}


def _checked_odds(no_answer_odds: dict[str, float], golds) -> dict[str, float]:
    missing = [qid for qid in golds if qid not in no_answer_odds]
    if missing:
        raise ValueError(f"{len(missing)} of {len(golds)} questions have no no-answer odds (first: {missing[:5]})")
    return no_answer_odds


def squad_v2_metrics(predictions: dict[str, str], golds: dict[str, list[str]],
                     no_answer_odds: dict[str, float] | None = None,
                     no_answer_threshold: float = 1.0) -> dict[str, float]:
    """What ``evaluate-v2.0.py data.json predictions.json [--na-prob-file odds.json
    --na-prob-thresh T]`` prints, in percent.

    ``golds`` maps question id -> answer texts, [] for an unanswerable question. A
    question is HasAns when it lists any answer, even answers that all normalise to
    nothing (it is then scored against ""). With ``no_answer_odds`` (question id -> a
    score that grows with "no answer", any scale), questions whose odds exceed
    ``no_answer_threshold`` count as answered "no answer", and ``best_exact`` /
    ``best_f1`` come from the official threshold sweep (``squad_v2_best_thresholds``).
    """
    _check_questions(golds)
    exact, f1 = _squad_v2_raw_scores(predictions, golds)
    has_answer = {qid: bool(answers) for qid, answers in golds.items()}
    if no_answer_odds is not None:
        odds = _checked_odds(no_answer_odds, golds)
        # Above the threshold the question is answered "no answer": right exactly when it has none.
        exact, f1 = ({qid: float(not has_answer[qid]) if odds[qid] > no_answer_threshold else score
                      for qid, score in scores.items()} for scores in (exact, f1))
    results = _summary(exact, f1, list(golds))
    for name, answerable in (("HasAns", True), ("NoAns", False)):
        qids = [qid for qid in golds if has_answer[qid] == answerable]
        if qids:
            results.update({f"{name}_{key}": value for key, value in _summary(exact, f1, qids).items()})
    if no_answer_odds is not None:
        results.update(squad_v2_best_thresholds(predictions, golds, no_answer_odds))
    return results


def squad_v2_best_thresholds(predictions: dict[str, str], golds: dict[str, list[str]],
                             no_answer_odds: dict[str, float]) -> dict[str, float]:
    """evaluate-v2.0.py's ``find_best_thresh`` for exact match and F1: the best score over
    no-answer thresholds, and the odds that reach it.

    ``predictions`` are the answers given when a question is answered (the best spans).
    The sweep starts with every question answered "no answer" (the unanswerable ones
    right) and lowers the threshold past one question at a time, in increasing odds (ties
    in the odds' order): an answerable question then adds its score, an unanswerable one
    loses its point when its prediction is a non-empty string (the raw text, as the
    official script tests it, so "the" counts as an answer here).
    """
    _check_questions(golds)
    odds = _checked_odds(no_answer_odds, golds)
    raw_scores = _squad_v2_raw_scores(predictions, golds)
    unanswerable = sum(1 for answers in golds.values() if not answers)
    results = {}
    for name, scores in zip(("exact", "f1"), raw_scores):
        current = best = unanswerable
        best_threshold = 0.0
        for qid in sorted(odds, key=lambda q: odds[q]):
            if qid not in scores:
                continue  # odds of a question the gold file does not hold
            if golds[qid]:
                current += scores[qid]
            elif predictions[qid]:
                current -= 1
            if current > best:
                best, best_threshold = current, odds[qid]
        results[f"best_{name}"] = 100.0 * best / len(scores)
        results[f"best_{name}_thresh"] = float(best_threshold)
    return results


# ---------------------------------------------------------------------------------------
# NER: entity-level precision / recall / F1 (conlleval)
# ---------------------------------------------------------------------------------------
# conlleval.pl reads chunks from IOB1 or IOB2 (BIO) tags: a chunk starts at B-, and at an
# I- that follows O or a tag of another type (IOB1); it ends before B-, O or a change of
# type. An entity counts as right only when its type, first and last token all match.
# conlleval has no S- tag and lets B- continue a chunk after E-; for IOBES tags the rules
# are seqeval's (the scorer of the official DeBERTa NER task; on BIO tags it agrees with
# conlleval): E- and S- always end a chunk, S- always starts one, and an I- or E- after E- /
# S- starts one. The type is all that follows the first hyphen ("I-geo-loc": "geo-loc"), as
# in both.
CHUNK_PREFIXES = ("B", "I", "E", "S")


def _split_tag(tag: str) -> tuple[str, str]:
    """(prefix, type): "B-PER" -> ("B", "PER"), "B" -> ("B", "").
    "O" and tags of no chunk scheme (POS tags, say) are outside every chunk: ("O", "")."""
    prefix, _, entity = tag.partition("-")
    return (prefix, entity) if prefix in CHUNK_PREFIXES else ("O", "")


def _chunk_ends(prev_prefix: str, prev_type: str, prefix: str, entity: str) -> bool:
    """Whether the chunk holding the previous token ends before this one."""
    if prev_prefix in ("E", "S"):
        return True
    if prev_prefix in ("B", "I"):
        return prefix in ("B", "S", "O") or entity != prev_type
    return False


def _chunk_starts(prev_prefix: str, prev_type: str, prefix: str, entity: str) -> bool:
    """Whether a chunk starts at this token."""
    if prefix in ("B", "S"):
        return True
    if prefix in ("I", "E"):
        return prev_prefix in ("E", "S", "O") or entity != prev_type
    return False


def extract_entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, first, last) of every chunk of one sentence."""
    chunks, start = set(), None
    prev_prefix, prev_type = "O", ""
    for i, tag in enumerate(list(tags) + ["O"]):  # the sentence boundary closes the last chunk
        prefix, entity = _split_tag(tag)
        if start is not None and _chunk_ends(prev_prefix, prev_type, prefix, entity):
            chunks.add((prev_type, start, i - 1))
            start = None
        if _chunk_starts(prev_prefix, prev_type, prefix, entity):
            start = i
        prev_prefix, prev_type = prefix, entity
    return chunks


def entity_metrics(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict[str, float]:
    """conlleval's overall figures in percent: entity precision, recall and F1 (micro-averaged
    over all types; 0 where nothing was found or predicted), and token accuracy (whole tags)."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted ones")
    correct = n_predicted = n_gold = 0
    tokens_right = tokens = 0
    for number, (predicted_tags, gold_tags) in enumerate(zip(predicted, gold)):
        if len(predicted_tags) != len(gold_tags):
            raise ValueError(f"sentence {number} has {len(gold_tags)} gold tags but {len(predicted_tags)} predictions")
        predicted_chunks, gold_chunks = extract_entities(predicted_tags), extract_entities(gold_tags)
        correct += len(predicted_chunks & gold_chunks)
        n_predicted += len(predicted_chunks)
        n_gold += len(gold_chunks)
        tokens_right += sum(p == g for p, g in zip(predicted_tags, gold_tags))
        tokens += len(gold_tags)
    precision = 100.0 * correct / n_predicted if n_predicted else 0.0
    recall = 100.0 * correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "accuracy": 100.0 * tokens_right / tokens if tokens else 0.0}
