"""Metrics against hand-computed values, and against scipy / scikit-learn where installed."""
import math

import numpy as np
import pytest

from finetune import metrics as M

# Hand example: labels   1 1 1 0 0 0 1 0
#               predicted 1 1 0 0 1 0 1 0   -> TP 3, FP 1, FN 1, TN 3
LABELS = [1, 1, 1, 0, 0, 0, 1, 0]
PREDICTED = [1, 1, 0, 0, 1, 0, 1, 0]


def test_binary_metrics_by_hand():
    assert M.accuracy(PREDICTED, LABELS) == 6 / 8
    assert M.f1_binary(PREDICTED, LABELS) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (9 - 1) / sqrt(4*4*4*4) = 0.5
    assert M.matthews_corrcoef(PREDICTED, LABELS) == pytest.approx(0.5)
    assert M.matthews_corrcoef([1, 1, 1], [0, 1, 1]) == 0.0  # constant prediction
    assert M.f1_macro(PREDICTED, LABELS) == pytest.approx(0.75)


def test_correlations_by_hand():
    assert M.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert M.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # x = 1 2 3 4, y = 1 3 2 4: centred dot 0.5*... -> cov 4, var 5 each -> 0.8
    assert M.pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # Monotone but not linear: Spearman 1, Pearson below 1.
    assert M.spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
    # Ties share the mean rank: y ranks 1.5 1.5 3 4.
    ranks_x, ranks_y = np.array([1, 2, 3, 4.0]), np.array([1.5, 1.5, 3, 4])
    assert M.spearman([1, 2, 3, 4], [7, 7, 8, 9]) == pytest.approx(np.corrcoef(ranks_x, ranks_y)[0, 1])


def test_correlations_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    y_tied = np.round(y)  # many ties
    assert M.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert M.spearman(x, y_tied) == pytest.approx(stats.spearmanr(x, y_tied)[0], abs=1e-12)


def test_classification_against_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=300)
    predicted = np.where(rng.random(300) < 0.6, labels, rng.integers(0, 3, size=300))
    assert M.matthews_corrcoef(predicted, labels) == pytest.approx(sklearn_metrics.matthews_corrcoef(labels, predicted))
    assert M.f1_macro(predicted, labels) == pytest.approx(sklearn_metrics.f1_score(labels, predicted, average="macro"))
    binary_labels, binary_predicted = labels % 2, predicted % 2
    assert M.f1_binary(binary_predicted, binary_labels) == pytest.approx(
        sklearn_metrics.f1_score(binary_labels, binary_predicted))


def test_squad_normalisation_and_scores():
    assert M.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert M.normalize_answer("an apple, a pear and the plum") == "apple pear and plum"
    assert M.squad_exact("the 1903 Prize", "1903 prize.") == 1
    # prediction "nobel prize in 1903" vs gold "1903": overlap 1, precision 1/4, recall 1 -> F1 0.4
    assert M.squad_f1("Nobel Prize in 1903", "1903") == pytest.approx(0.4)
    assert M.squad_f1("", "") == 1.0 and M.squad_f1("x", "") == 0.0


def test_squad_v1_aggregate_takes_the_best_gold():
    predictions = {"a": "Denver Broncos", "b": "in 1903", "c": "Paris"}
    golds = {"a": ["Denver Broncos", "Broncos"], "b": ["1903", "the year 1903"], "c": ["London"]}
    # a: EM 1 F1 1; b: EM 0, F1 max(2/3 with "1903", 0.8 with "year 1903"... ) see below; c: 0
    # b vs "1903": tokens [in, 1903] vs [1903] -> P 1/2 R 1 -> 2/3
    # b vs "the year 1903" -> [in, 1903] vs [year, 1903] -> P 1/2 R 1/2 -> 1/2; max = 2/3
    result = M.squad_metrics(predictions, golds)
    assert result["exact"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    assert result["total"] == 3 and "HasAns_exact" not in result


def test_squad_v2_no_answer_rules_and_best_threshold():
    golds = {"has1": ["1903"], "has2": ["Paris"], "no1": [], "no2": []}
    predictions = {"has1": "1903", "has2": "Lyon", "no1": "", "no2": "something"}
    odds = {"has1": -5.0, "has2": 1.0, "no1": 3.0, "no2": 0.5}
    result = M.squad_metrics(predictions, golds, odds)
    assert result["exact"] == 50.0  # has1 and no1 right
    assert result["HasAns_exact"] == 50.0 and result["NoAns_exact"] == 50.0
    # Threshold sweep, questions by odds: has1 (-5), no2 (0.5), has2 (1), no1 (3).
    # Start: all "no answer" -> no1, no2 right = 2. has1 answered: +1 -> 3 (best, thresh -5).
    # no2 answered "something": -1 -> 2. has2 answered wrong: +0. no1 answered "": +0.
    assert result["best_exact"] == 75.0 and result["best_exact_thresh"] == -5.0


def test_entity_chunks_conlleval_rules():
    assert M.extract_entities(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 1), ("LOC", 3, 3)}
    # IOB1: an I- after O or after another type starts a chunk; B- splits adjacent ones.
    assert M.extract_entities(["I-ORG", "I-ORG", "B-ORG", "I-LOC"]) == {("ORG", 0, 1), ("ORG", 2, 2), ("LOC", 3, 3)}
    assert M.extract_entities(["S-PER", "B-LOC", "E-LOC", "O"]) == {("PER", 0, 0), ("LOC", 1, 2)}


def test_entity_f1_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    # gold chunks 3, predicted 3 (PER, ORG, LOC@1), correct 2 -> P = R = 2/3 -> F1 2/3
    result = M.entity_metrics(predicted, gold)
    assert result["precision"] == pytest.approx(200 / 3) and result["recall"] == pytest.approx(200 / 3)
    assert result["f1"] == pytest.approx(200 / 3)
    assert result["accuracy"] == pytest.approx(100 * 4 / 6)
    # A partly right span is wrong as an entity.
    assert M.entity_metrics([["B-PER", "O"]], [["B-PER", "I-PER"]])["f1"] == 0.0
    assert not math.isnan(M.entity_metrics([["O"]], [["O"]])["f1"])
