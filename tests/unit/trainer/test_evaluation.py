"""Evaluation on out-of-fold probabilities: the figures of dataset_info and how the cuts are chosen."""

from __future__ import annotations

import numpy as np

from trainer.evaluation import (
    NULL_FIGURES,
    Counts,
    best_none_logit,
    best_threshold,
    count,
    cross_fitted_counts,
    micro_average,
)


def test_figures_are_percent_with_one_decimal() -> None:
    assert Counts(tp=2, fp=1, fn=0).figures() == {"recall": 100.0, "precision": 66.7, "f1": 80.0}
    assert Counts(tp=0, fp=0, fn=3).figures() == {"recall": 0.0, "precision": 0.0, "f1": 0.0}


def test_threshold_sits_between_separated_classes() -> None:
    probs = np.array([0.1, 0.2, 0.3, 0.7, 0.8])
    y = np.array([0, 0, 0, 1, 1])
    assert 0.3 < best_threshold(probs, y) < 0.7


def test_count_tells_each_kind_of_answer() -> None:
    pred = np.array([True, True, False, False, True])
    y = np.array([1, 0, 1, 0, 1])
    assert count(pred, y) == Counts(tp=2, fp=1, fn=1, tn=1)


def test_each_fold_is_judged_with_the_other_folds_threshold() -> None:
    # Fold one's own cut (0.7) would miss fold two's positive at 0.45; fold two's own cut (0.275) would
    # pass fold one's negative at 0.5. Judged with its own cut each fold would look perfect (tp=2, tn=2).
    probs = np.array([0.9, 0.5, 0.45, 0.1])
    y = np.array([1, 0, 1, 0])
    folds = [(np.array([0, 1]), np.array([2, 3])), (np.array([2, 3]), np.array([0, 1]))]
    assert cross_fitted_counts(probs, y, folds) == Counts(tp=1, fp=1, fn=1, tn=1)


def test_micro_average_sums_counts_and_is_null_without_any() -> None:
    assert micro_average([Counts(tp=1, fp=1), None, Counts(tp=1, fn=2)]) == Counts(tp=2, fp=1, fn=2).figures()
    assert micro_average([None, None]) == NULL_FIGURES


def test_none_logit_cuts_between_answered_and_unknown_rows() -> None:
    # Rows 0 and 1: the top tag is right; row 2 belongs to no tag and should be answered unknown.
    logits = np.array([[3.0, 0.0], [0.0, 2.5], [-1.0, -2.0]])
    truth = np.array([[True, False], [False, True], [False, False]])
    nu = best_none_logit(logits, truth)
    assert -1.0 < nu <= 2.5
    # The lowest such cut: it sits just above row 2's best logit.
    assert nu < -0.99


def test_none_logit_answers_every_row_when_every_top_tag_is_right() -> None:
    logits = np.array([[1.0, 0.0], [0.0, 0.2]])
    truth = np.array([[True, False], [False, True]])
    assert best_none_logit(logits, truth) < 0.2
