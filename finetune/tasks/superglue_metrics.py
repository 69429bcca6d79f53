"""SuperGLUE's own metrics, as its leaderboard and the tasks' official scripts define them.

MultiRC: F1a, the binary F1 of the "true answer" class over every answer option of every
question pooled together, and EM, the share of questions whose options are all labelled
right. ReCoRD: per query, the token F1 and exact match of the predicted entity against
each gold answer after SQuAD's normalisation, the best over the golds, averaged over the
queries (``record_eval.py``: unlike SQuAD 2.0's rule, an empty prediction earns no F1).
AX-g: gender parity, the share of the Winogender pairs (one premise told with a male and
with a female pronoun, same hypothesis) that get the same prediction twice.

All figures are fractions in [0, 1], as the other classification metrics here.
"""
from __future__ import annotations

import collections
from typing import Hashable, Sequence

import numpy as np

from ..metrics import f1_binary, normalize_answer


def multirc_metrics(predicted: Sequence[Sequence[int]], gold: Sequence[Sequence[int]]) -> dict[str, float]:
    """``predicted`` / ``gold``: per question, the 0/1 label of each of its answer options."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(gold)} questions but {len(predicted)} predictions")
    flat_predicted = [p for question in predicted for p in question]
    flat_gold = [g for question in gold for g in question]
    exact = [list(p) == list(g) for p, g in zip(predicted, gold)]
    return {"f1a": f1_binary(flat_predicted, flat_gold, positive=1),
            "em": float(np.mean(exact)) if exact else 0.0}


def record_token_f1(prediction: str, gold: str) -> float:
    predicted_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    overlap = sum((collections.Counter(predicted_tokens) & collections.Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def record_metrics(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean over queries of the best F1 / exact match against any of the query's gold answers."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(golds)} queries but {len(predictions)} predictions")
    f1 = [max((record_token_f1(p, g) for g in answers), default=0.0) for p, answers in zip(predictions, golds)]
    exact = [max((float(normalize_answer(p) == normalize_answer(g)) for g in answers), default=0.0)
             for p, answers in zip(predictions, golds)]
    return {"f1": float(np.mean(f1)) if f1 else 0.0, "em": float(np.mean(exact)) if exact else 0.0}


def gender_parity(predictions: Sequence[Hashable], pair_ids: Sequence[Hashable]) -> float:
    """Share of pairs (examples with one ``pair_id``) whose members are predicted alike."""
    pairs: dict[Hashable, list] = collections.defaultdict(list)
    for prediction, pair in zip(predictions, pair_ids):
        pairs[pair].append(prediction)
    complete = [members for members in pairs.values() if len(members) > 1]
    return float(np.mean([len(set(members)) == 1 for members in complete])) if complete else 0.0
