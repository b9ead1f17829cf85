"""`kashf eval`'s figures on hand-counted cases."""

from __future__ import annotations

import pytest

from kashf_client.metrics import UNKNOWN, evaluate


def test_per_tag_scores_macro_f1_and_confusion() -> None:
    truth = [["a"], ["a"], ["b"], ["b"], ["a", "b"]]
    predicted = [["a"], ["b"], ["b"], [], ["a"]]
    result = evaluate(truth, predicted)
    scores = {s.tag: s for s in result.tags}
    # a: tp 2 (rows 0, 4), fn 1 (row 1); b: tp 1 (row 2), fp 1 (row 1), fn 2 (rows 3, 4).
    assert (scores["a"].precision, scores["a"].recall) == (1.0, pytest.approx(2 / 3))
    assert (scores["b"].precision, scores["b"].recall) == (0.5, pytest.approx(1 / 3))
    assert result.macro_f1 == pytest.approx((0.8 + 0.4) / 2)
    assert result.exact == 2
    assert result.rows == ["a", "b"] and result.columns == ["a", "b", UNKNOWN]
    # Rows: true tag; columns: the top predicted tag (row 4 counts once under a and once under b).
    assert result.confusion == [[2, 1, 0], [1, 1, 1]]


def test_a_predicted_tag_absent_from_the_truth_is_a_column_and_scores_zero() -> None:
    result = evaluate([["a"]], [["c"]])
    assert result.columns == ["a", "c", UNKNOWN] and result.confusion == [[0, 1, 0]]
    assert {s.tag: s.f1 for s in result.tags} == {"a": 0.0, "c": 0.0}
