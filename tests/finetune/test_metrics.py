"""Metrics against hand-computed values, scipy / scikit-learn, and transcriptions of the
official scorers' algorithms (evaluate-v1.1.py, evaluate-v2.0.py, conlleval.pl)."""
import collections
import random
import re
import string

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


def test_glue_metrics_against_scikit_learn_on_many_draws():
    """MRPC / QQP F1 of class 1, CoLA's MCC and accuracy, degenerate predictions included."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    for draw in range(30):
        labels = rng.integers(0, 2, size=int(rng.integers(5, 60)))
        predicted = np.where(rng.random(len(labels)) < rng.random(), labels, 1 - labels)
        if draw % 10 == 0:
            predicted = np.full_like(labels, draw // 10 % 2)  # a constant prediction
        assert M.accuracy(predicted, labels) == pytest.approx(sklearn_metrics.accuracy_score(labels, predicted))
        assert M.f1_binary(predicted, labels) == pytest.approx(
            sklearn_metrics.f1_score(labels, predicted, zero_division=0.0))
        assert M.matthews_corrcoef(predicted, labels) == pytest.approx(
            sklearn_metrics.matthews_corrcoef(labels, predicted), abs=1e-12)
    assert M.classification_metrics([0, 0, 1], np.array([1, 0, 1]), ("f1", "mcc", "accuracy")) == pytest.approx(
        {"f1": 2 / 3, "mcc": 0.5, "accuracy": 2 / 3})


# ---------------------------------------------------------------------------------------
# SQuAD
# ---------------------------------------------------------------------------------------
def test_squad_normalisation_and_scores():
    assert M.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert M.normalize_answer("an apple, a pear and the plum") == "apple pear and plum"
    assert M.squad_exact("the 1903 Prize", "1903 prize.") == 1
    # prediction "nobel prize in 1903" vs gold "1903": overlap 1, precision 1/4, recall 1 -> F1 0.4
    assert M.squad_v1_f1("Nobel Prize in 1903", "1903") == M.squad_v2_f1("Nobel Prize in 1903", "1903") == 0.4
    # Empty answers: 2.0 scores "no answer" against "no answer" as right, 1.1 finds no common token.
    assert M.squad_v2_f1("", "") == 1 and M.squad_v2_f1("x", "") == 0 and M.squad_v2_f1("the", "a") == 1
    assert M.squad_v1_f1("", "") == 0 and M.squad_exact("", "") == 1


def test_squad_v1_aggregate_takes_the_best_gold():
    predictions = {"a": "Denver Broncos", "b": "in 1903", "c": "Paris"}
    golds = {"a": ["Denver Broncos", "Broncos"], "b": ["1903", "the year 1903"], "c": ["London"], "d": ["x"]}
    # a: EM 1 F1 1. b vs "1903": [in, 1903] vs [1903] -> P 1/2 R 1 -> 2/3; vs "the year 1903":
    # [in, 1903] vs [year, 1903] -> 1/2; max 2/3. c: 0. d: no prediction, scored 0 but counted.
    result = M.squad_v1_metrics(predictions, golds)
    assert result == pytest.approx({"exact": 100 / 4, "f1": 100 * (1 + 2 / 3) / 4, "total": 4})


def test_empty_prediction_against_an_article_and_a_name():
    """The issue's case: "" vs ["the", "Paris"]. 2.0 drops "the" (it normalises to nothing) and
    scores "" against "Paris": 0. 1.1 keeps it, and "" matches "the" exactly (F1 stays 0)."""
    golds = {"q": ["the", "Paris"]}
    assert M.squad_v2_metrics({"q": ""}, golds) == {"exact": 0.0, "f1": 0.0, "total": 1.0, "HasAns_exact": 0.0,
                                                    "HasAns_f1": 0.0, "HasAns_total": 1.0}
    assert M.squad_v1_metrics({"q": ""}, golds) == {"exact": 100.0, "f1": 0.0, "total": 1.0}
    assert M.squad_v2_metrics({"q": "in Paris."}, golds)["exact"] == 0.0  # "in paris" != "paris"
    assert M.squad_v2_metrics({"q": "paris!"}, golds)["f1"] == 100.0


def test_answers_that_all_normalise_to_nothing_make_a_hasans_question():
    """Listed answers make a question HasAns however they normalise; with none left it is
    scored against "" -- and a no-answer call above the threshold is wrong for it."""
    golds = {"q": ["The", "."], "u": []}
    result = M.squad_v2_metrics({"q": "", "u": ""}, golds)
    assert (result["HasAns_total"], result["NoAns_total"]) == (1.0, 1.0)
    assert result["HasAns_exact"] == result["HasAns_f1"] == 100.0
    assert M.squad_v2_metrics({"q": "Paris", "u": ""}, golds)["HasAns_exact"] == 0.0
    # Odds above the threshold: the official script counts "no answer" as wrong for a HasAns question.
    thresholded = M.squad_v2_metrics({"q": "", "u": ""}, golds, {"q": 5.0, "u": 5.0}, no_answer_threshold=1.0)
    assert thresholded["HasAns_exact"] == 0.0 and thresholded["NoAns_exact"] == 100.0


# Hand-worked SQuAD 2.0 set. Odds in the dict's order: h1 -3, h2 -1, h3 0.5, n1 2, n2 -1, n3 1.
HAND_GOLDS = {"h1": ["1903"], "h2": ["Marie Curie"], "h3": ["Paris"], "n1": [], "n2": [], "n3": []}
HAND_SPANS = {"h1": "1903", "h2": "Curie", "h3": "Lyon", "n1": "", "n2": "the mill", "n3": "the"}
HAND_ODDS = {"h1": -3.0, "h2": -1.0, "h3": 0.5, "n1": 2.0, "n2": -1.0, "n3": 1.0}


def test_squad_v2_threshold_and_best_threshold_by_hand():
    # Raw scores: h1 EM 1 F1 1; h2 EM 0, F1 [curie] vs [marie, curie]: P 1 R 1/2 -> 2/3; h3 0;
    # n1 "" right; n2 wrong; n3 "the" normalises to "" -> right.
    raw = M.squad_v2_metrics(HAND_SPANS, HAND_GOLDS)
    assert raw["exact"] == pytest.approx(100 * 3 / 6) and raw["f1"] == pytest.approx(100 * (3 + 2 / 3) / 6)
    # Threshold 0: h3, n3, n1 (odds > 0) answer "no answer": h3 wrong, n3 and n1 right.
    result = M.squad_v2_metrics(HAND_SPANS, HAND_GOLDS, HAND_ODDS, no_answer_threshold=0.0)
    assert result["exact"] == pytest.approx(100 * 3 / 6) and result["f1"] == pytest.approx(100 * (3 + 2 / 3) / 6)
    assert result["HasAns_exact"] == pytest.approx(100 / 3) and result["HasAns_f1"] == pytest.approx(100 * 5 / 9)
    assert result["NoAns_exact"] == result["NoAns_f1"] == pytest.approx(200 / 3)
    # Sweep in increasing odds (h2 before n2: ties keep the dict's order), from 3 (every
    # unanswerable right): exact h1 +1 = 4 (best, -3), h2 +0, n2 "the mill" -1 = 3, h3 +0,
    # n3 -1 (the raw text "the" is non-empty) = 2, n1 +0. F1: h1 -> 4 (-3), h2 +2/3 -> 14/3
    # (best, at -1: the official sweep takes a tie's first member), n2 -1, h3 0, n3 -1, n1 0.
    assert result["best_exact"] == pytest.approx(100 * 4 / 6) and result["best_exact_thresh"] == -3.0
    assert result["best_f1"] == pytest.approx(100 * (14 / 3) / 6) and result["best_f1_thresh"] == -1.0
    assert M.squad_v2_best_thresholds(HAND_SPANS, HAND_GOLDS, HAND_ODDS) == {
        k: v for k, v in result.items() if k.startswith("best_")}
    # Nothing beats answering "no answer" everywhere: the threshold stays 0.
    worse = M.squad_v2_best_thresholds({q: "wrong" for q in HAND_GOLDS}, HAND_GOLDS, HAND_ODDS)
    assert worse == {"best_exact": 50.0, "best_exact_thresh": 0.0, "best_f1": 50.0, "best_f1_thresh": 0.0}


def test_squad_bad_input_is_named():
    with pytest.raises(ValueError, match="no prediction.*'b'"):
        M.squad_v2_metrics({"a": ""}, {"a": [], "b": ["x"]})
    with pytest.raises(ValueError, match="no no-answer odds.*'b'"):
        M.squad_v2_metrics({"a": "", "b": ""}, {"a": [], "b": ["x"]}, {"a": 0.0})
    with pytest.raises(ValueError, match="no questions"):
        M.squad_v1_metrics({}, {})


# A transcription of evaluate-v2.0.py's algorithm (and of evaluate-v1.1.py's scoring) to
# compare with on random sets: normalise, drop empty golds, raw scores, threshold, sweep.
def _reference_normalise(s):
    s = "".join(c for c in s.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def _reference_f1(gold, pred, v2):
    gold_toks, pred_toks = _reference_normalise(gold).split(), _reference_normalise(pred).split()
    if v2 and (not gold_toks or not pred_toks):
        return int(gold_toks == pred_toks)
    same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if same == 0:
        return 0
    p, r = 1.0 * same / len(pred_toks), 1.0 * same / len(gold_toks)
    return (2 * p * r) / (p + r)


def _reference_v2(qas, preds, na_probs, thresh):
    has_ans = {qa["id"]: bool(qa["answers"]) for qa in qas}
    exact_raw, f1_raw = {}, {}
    for qa in qas:
        golds = [a["text"] for a in qa["answers"] if _reference_normalise(a["text"])] or [""]
        exact_raw[qa["id"]] = max(int(_reference_normalise(a) == _reference_normalise(preds[qa["id"]])) for a in golds)
        f1_raw[qa["id"]] = max(_reference_f1(a, preds[qa["id"]], True) for a in golds)
    probs = na_probs or {k: 0.0 for k in preds}
    exact, f1 = ({k: float(not has_ans[k]) if probs[k] > thresh else s for k, s in raw.items()}
                 for raw in (exact_raw, f1_raw))

    def summary(ids):
        return {"exact": 100.0 * sum(exact[k] for k in ids) / len(ids),
                "f1": 100.0 * sum(f1[k] for k in ids) / len(ids), "total": len(ids)}
    out = summary(list(exact))
    for prefix, ids in (("HasAns", [k for k, v in has_ans.items() if v]),
                        ("NoAns", [k for k, v in has_ans.items() if not v])):
        if ids:
            out.update({f"{prefix}_{k}": v for k, v in summary(ids).items()})
    if na_probs:
        for name, scores in (("exact", exact_raw), ("f1", f1_raw)):
            cur = best = sum(1 for k in has_ans if not has_ans[k])
            best_thresh = 0.0
            for qid in sorted(na_probs, key=lambda k: na_probs[k]):
                cur += scores[qid] if has_ans[qid] else (-1 if preds[qid] else 0)
                if cur > best:
                    best, best_thresh = cur, na_probs[qid]
            out[f"best_{name}"], out[f"best_{name}_thresh"] = 100.0 * best / len(scores), best_thresh
    return out


def _reference_v1(qas, preds):
    exact = f1 = 0
    for qa in qas:
        truths = [a["text"] for a in qa["answers"]]
        exact += max(_reference_normalise(preds[qa["id"]]) == _reference_normalise(t) for t in truths)
        f1 += max(_reference_f1(t, preds[qa["id"]], False) for t in truths)
    return {"exact": 100.0 * exact / len(qas), "f1": 100.0 * f1 / len(qas), "total": len(qas)}


WORDS = ["Paris", "paris", "the", "The", "a", "an", ".", ",", "Curie", "1903", "Nobel", "prize", "prize!", "in"]


def _random_set(rng: random.Random):
    def text():
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 3)))
    qas = [{"id": f"q{i}", "answers": [{"text": text()} for _ in range(rng.choice([0, 0, 1, 2, 3]))]}
           for i in range(rng.randint(1, 12))]
    preds = {qa["id"]: text() for qa in qas}
    # Few distinct odds, so ties are common.
    na_probs = {qa["id"]: rng.choice([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0]) for qa in qas}
    return qas, preds, na_probs, rng.choice([-1.0, 0.0, 0.5, 1.0])


def test_squad_v2_matches_the_official_algorithm_on_200_random_sets():
    rng = random.Random(0)
    differing_from_raw_max = 0
    for _ in range(200):
        qas, preds, na_probs, thresh = _random_set(rng)
        golds = {qa["id"]: [a["text"] for a in qa["answers"]] for qa in qas}
        assert M.squad_v2_metrics(preds, golds) == _reference_v2(qas, preds, None, 1.0)
        assert M.squad_v2_metrics(preds, golds, na_probs, thresh) == _reference_v2(qas, preds, na_probs, thresh)
        answerable = [qa for qa in qas if qa["answers"]]
        if answerable:  # evaluate-v1.1.py cannot score a question without answers
            v1_golds = {qa["id"]: golds[qa["id"]] for qa in answerable}
            assert M.squad_v1_metrics(preds, v1_golds) == _reference_v1(answerable, preds)
            differing_from_raw_max += (M.squad_v1_metrics(preds, v1_golds)["exact"]
                                       != M.squad_v2_metrics(preds, v1_golds)["exact"])
    assert differing_from_raw_max > 20  # the sets exercise where 1.1 and 2.0 part ways


# ---------------------------------------------------------------------------------------
# NER
# ---------------------------------------------------------------------------------------
def test_entity_chunks_conlleval_rules():
    assert M.extract_entities(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 1), ("LOC", 3, 3)}
    # IOB1: an I- after O or after another type starts a chunk; B- splits adjacent ones.
    assert M.extract_entities(["I-ORG", "I-ORG", "B-ORG", "I-LOC"]) == {("ORG", 0, 1), ("ORG", 2, 2), ("LOC", 3, 3)}
    # The same text in IOB2 gives the same chunks.
    assert M.extract_entities(["B-ORG", "I-ORG", "B-ORG", "B-LOC"]) == {("ORG", 0, 1), ("ORG", 2, 2), ("LOC", 3, 3)}
    # An I- after O starts a chunk; an I- of another type ends the previous one.
    assert M.extract_entities(["O", "I-PER", "I-PER", "I-LOC", "O", "I-LOC"]) == {
        ("PER", 1, 2), ("LOC", 3, 3), ("LOC", 5, 5)}
    # IOBES (seqeval's reading): E- and S- close a chunk; an I- after E- opens a new one.
    assert M.extract_entities(["S-PER", "B-LOC", "E-LOC", "O"]) == {("PER", 0, 0), ("LOC", 1, 2)}
    assert M.extract_entities(["S-PER", "S-PER", "B-LOC", "E-LOC", "I-LOC"]) == {
        ("PER", 0, 0), ("PER", 1, 1), ("LOC", 2, 3), ("LOC", 4, 4)}
    # O, and tags of no chunk scheme, are outside every chunk; a bare B- has an empty type.
    assert M.extract_entities(["NN", "B-PER", "VBD", "O"]) == {("PER", 1, 1)}
    assert M.extract_entities(["B", "I", "O", "I"]) == {("", 0, 1), ("", 3, 3)}


def test_entity_f1_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    # gold chunks 3, predicted 3 (PER, ORG, LOC@1), correct 2 -> P = R = 2/3 -> F1 2/3
    result = M.entity_metrics(predicted, gold)
    assert result["precision"] == pytest.approx(200 / 3) and result["recall"] == pytest.approx(200 / 3)
    assert result["f1"] == pytest.approx(200 / 3)
    assert result["accuracy"] == pytest.approx(100 * 4 / 6)
    # A partly right span is wrong as an entity; so is the right span with the wrong type.
    assert M.entity_metrics([["B-PER", "O"]], [["B-PER", "I-PER"]])["f1"] == 0.0
    assert M.entity_metrics([["B-LOC", "I-LOC"]], [["B-PER", "I-PER"]])["f1"] == 0.0
    # IOB1 gold against an IOB2 prediction of the same entities: all right, though 1 tag in 3 differs.
    both = M.entity_metrics([["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]])
    assert both["f1"] == 100.0 and both["accuracy"] == pytest.approx(200 / 3)
    # Nothing predicted: precision 0 (not NaN), as conlleval prints it.
    empty = M.entity_metrics([["O", "O"]], [["B-PER", "O"]])
    assert (empty["precision"], empty["recall"], empty["f1"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="sentence 0 has 2 gold tags but 1"):
        M.entity_metrics([["O"]], [["O", "O"]])


def _conlleval_counts(gold_sentences, predicted_sentences):
    """conlleval.pl's streaming count (its endOfChunk / startOfChunk for B, I, O, E and its
    in-correct-chunk state), sentence boundaries read as O: (correct, guessed, gold chunks)."""
    def end(prev, tag, prev_type, type_):
        return ((prev, tag) in {("B", "B"), ("B", "O"), ("I", "B"), ("I", "O"), ("E", "E"), ("E", "I"), ("E", "O")}
                or (prev not in ("O", ".") and prev_type != type_))

    def start(prev, tag, prev_type, type_):
        return ((prev, tag) in {("B", "B"), ("I", "B"), ("O", "B"), ("O", "I"), ("E", "E"), ("E", "I"), ("O", "E")}
                or (tag not in ("O", ".") and prev_type != type_))

    def split(tag):  # /^([^-]*)-(.*)$/: the type is all after the first hyphen
        prefix, _, type_ = tag.partition("-")
        return prefix, type_

    tokens = [(g, p) for gs, ps in zip(gold_sentences, predicted_sentences) for g, p in [*zip(gs, ps), ("O", "O")]]
    correct = guessed = found = 0
    in_correct, last_c, last_ct, last_g, last_gt = False, "O", "", "O", ""
    for gold_tag, guess_tag in tokens:
        (c, ct), (g, gt) = split(gold_tag), split(guess_tag)
        end_c, end_g = end(last_c, c, last_ct, ct), end(last_g, g, last_gt, gt)
        start_c, start_g = start(last_c, c, last_ct, ct), start(last_g, g, last_gt, gt)
        if in_correct:
            if end_c and end_g and last_gt == last_ct:
                in_correct, correct = False, correct + 1
            elif end_c != end_g or gt != ct:
                in_correct = False
        if start_c and start_g and gt == ct:
            in_correct = True
        found += start_c
        guessed += start_g
        last_c, last_ct, last_g, last_gt = c, ct, g, gt
    return correct + in_correct, guessed, found


def test_entity_counts_match_conlleval_on_random_bio_tags():
    rng = random.Random(1)
    tags = ["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG", "B-geo-loc", "I-geo-loc"]
    for _ in range(200):
        lengths = [rng.randint(1, 8) for _ in range(rng.randint(1, 4))]
        gold = [[rng.choice(tags) for _ in range(n)] for n in lengths]
        # Predictions that mostly agree, so that there are right chunks to count.
        predicted = [[g if rng.random() < 0.7 else rng.choice(tags) for g in sentence] for sentence in gold]
        correct, guessed, found = _conlleval_counts(gold, predicted)
        result = M.entity_metrics(predicted, gold)
        assert result["precision"] == (100.0 * correct / guessed if guessed else 0.0)
        assert result["recall"] == (100.0 * correct / found if found else 0.0)
