"""Offline metrics against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from makd.tasks.metrics import exact_match, glue_metrics, normalize_answer, rouge_l, squad_metrics, token_f1


def test_accuracy_from_ids_and_logits():
    assert glue_metrics("sst2", [1, 0, 1, 1], [1, 0, 0, 1]) == {"accuracy": 0.75, "main": "accuracy"}
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 1.0], [-3.0, 3.0]])  # argmax 1, 0, 1, 1
    assert glue_metrics("rte", logits, [1, 0, 0, 1])["accuracy"] == 0.75
    mnli = glue_metrics("mnli", np.array([[3, 1, 0], [0, 2, 1], [0, 1, 5]]), [0, 1, 1])
    assert mnli["accuracy"] == pytest.approx(2 / 3) and mnli["main"] == "accuracy"


def test_mrpc_f1_accuracy_combined():
    # TP=2 (0,4), FP=1 (1), FN=1 (3), TN=1 (2): P = R = 2/3 -> F1 = 2/3; accuracy 3/5
    m = glue_metrics("mrpc", [1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(0.6)
    assert m["combined"] == pytest.approx((0.6 + 2 / 3) / 2) and m["main"] == "f1"
    assert glue_metrics("qqp", [0, 0], [1, 0])["f1"] == 0.0  # no predicted positive


def test_cola_matthews_on_small_confusion():
    # TP=3, FN=1, TN=3, FP=1: MCC = (3*3 - 1*1) / sqrt(4*4*4*4) = 0.5
    m = glue_metrics("cola", [1, 1, 0, 0, 0, 1, 1, 0], [1, 1, 1, 0, 0, 0, 1, 0])
    assert m["matthews_correlation"] == pytest.approx(0.5) and m["main"] == "matthews_correlation"


def test_stsb_pearson_spearman():
    # dx = (-1.5, -.5, .5, 1.5), dy = (-3.25, -1.25, .75, 3.75): r = 11.5 / sqrt(5 * 26.75)
    m = glue_metrics("stsb", np.array([[1.0], [2.0], [3.0], [4.0]]), [2.0, 4.0, 6.0, 9.0])
    assert m["pearson"] == pytest.approx(11.5 / math.sqrt(5 * 26.75)) and m["spearmanr"] == pytest.approx(1.0)
    # one swapped pair: rho = 1 - 6 * 2 / (4 * 15) = 0.8
    m = glue_metrics("stsb", [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])
    assert m["spearmanr"] == pytest.approx(0.8) and m["main"] == "spearmanr"
    assert m["combined"] == pytest.approx((m["pearson"] + 0.8) / 2)


def test_glue_bad_input():
    with pytest.raises(ValueError, match="unknown GLUE task.*cola"):
        glue_metrics("wnli", [1], [1])
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        glue_metrics("sst2", [1, 0, 1], [1, 0])


def test_squad_normalisation():
    assert normalize_answer("The  Harbour Hawks!") == "harbour hawks"
    assert normalize_answer("an apple, a day") == "apple day"
    assert normalize_answer("Theatre anthem") == "theatre anthem"  # articles only as whole words
    assert normalize_answer("A.B.C. (1999)") == "abc 1999"
    assert exact_match("the Hawks.", "Hawks") == 1


def test_squad_em_f1_max_over_golds():
    assert token_f1("the Hawks team", "Harbour Hawks") == pytest.approx(0.5)  # 1 common of 2 and 2
    assert token_f1("Hawks Hawks", "Hawks") == pytest.approx(2 * 0.5 * 1 / 1.5)  # P = 1/2, R = 1
    refs = {"q1": ["the Harbour Hawks", "Hawks"], "q2": ["Harbour Hawks"]}
    m = squad_metrics({"q1": "Harbour Hawks", "q2": "the Hawks team"}, refs)
    assert m["exact_match"] == pytest.approx(50.0) and m["f1"] == pytest.approx(75.0) and m["total"] == 2
    assert m["main"] == "f1"


def test_squad_v2_no_answer_cases():
    assert token_f1("", "", version_2=False) == 0.0 and token_f1("", "", version_2=True) == 1.0
    refs = {"a": ["Norland"], "b": [], "c": [], "d": ["14th century"]}
    preds = {"a": "Norland", "b": "", "c": "Fenwick", "d": ""}
    m = squad_metrics(preds, refs, version_2=True)
    assert m["exact_match"] == pytest.approx(50.0) and m["f1"] == pytest.approx(50.0)
    assert (m["HasAns_total"], m["NoAns_total"]) == (2, 2)
    assert m["HasAns_exact_match"] == pytest.approx(50.0) and m["NoAns_exact_match"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="version_2=True"):
        squad_metrics({"b": ""}, {"b": []})


def test_squad_v2_no_answer_probs_and_best_threshold():
    refs, preds = {"a": ["x"], "b": []}, {"a": "x", "b": "y"}
    probs = {"a": 0.1, "b": 0.9}
    m = squad_metrics(preds, refs, version_2=True, no_answer_probs=probs)
    assert m["exact_match"] == pytest.approx(50.0)  # default threshold 1.0 changes nothing
    # official find_best_thresh: start at 1 (all null), +1 at a (0.1) -> best 2/2 at 0.1, -1 at b
    assert m["best_exact_match"] == pytest.approx(100.0) and m["best_exact_match_thresh"] == pytest.approx(0.1)
    m = squad_metrics(preds, refs, version_2=True, no_answer_probs=probs, no_answer_threshold=0.5)
    assert m["exact_match"] == pytest.approx(100.0)


def test_squad_missing_prediction_is_an_error():
    with pytest.raises(ValueError, match="1 of 2 questions have no prediction"):
        squad_metrics({"a": "x"}, {"a": ["x"], "b": ["y"]})


def test_rouge_l():
    assert rouge_l(["the cat sat"], ["the cat sat"]) == pytest.approx(100.0)
    # LCS 3: P = 3/3, R = 3/6 -> F = 2/3; mean with a 0 (no overlap)
    assert rouge_l(["the cat sat", "dog"], ["the cat sat on the mat", "bird"]) == pytest.approx(100 / 3)
    assert rouge_l(["cats running"], ["cat run"]) == pytest.approx(100.0)  # Porter stemmer
    assert rouge_l(["a b"], [["z", "a b"]]) == pytest.approx(100.0)  # best of several references
    assert rouge_l([""], ["something"]) == 0.0
    with pytest.raises(ValueError, match="reference 1 is empty"):
        rouge_l(["x", "y"], ["x", "  "])
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        rouge_l(["x", "y"], ["x"])
