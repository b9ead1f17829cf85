"""The array versions of the per-report and per-cut loops give the loops' answers (and scikit-learn's)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from trainer.evaluation import average_precision, best_none_logit
from trainer.fitting import Report
from trainer.labels import build_labels


def labels_by_loop(reports: list[Report], tag_id: int) -> tuple[list[int], list[int], list[float]]:
    """The definition: last report of a pair wins; an item positive for any tag is an implicit negative (0.5)."""
    label: dict[int, tuple[int, float]] = {}
    for r in reports:
        if r.tag_id == tag_id:
            label[r.row] = (int(r.positive), 1.0)
    for row in {r.row for r in reports if r.positive}:
        if row not in label:
            label[row] = (0, 0.5)
    rows = sorted(label)
    return rows, [label[r][0] for r in rows], [label[r][1] for r in rows]


@pytest.mark.parametrize("seed", range(5))
def test_label_matrix_matches_the_per_report_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Repeated and contradicting pairs, tags outside the listed ones, items with negatives only.
    reports = [Report(int(rng.integers(40)), int(rng.integers(8)), bool(rng.random() < 0.6)) for _ in range(150)]
    listed = [5, 0, 3, 7, 2]
    labels = build_labels(reports, listed, implicit_negatives=True)
    assert labels.tag_ids == listed
    for j, tag in enumerate(listed):
        rows, y, w = labels.column(j, implicit_weight=0.5)
        want = labels_by_loop(reports, tag)
        assert (rows.tolist(), y.tolist(), w.tolist()) == want
    multi = sum(len({r.tag_id for r in reports if r.row == row and r.positive}) >= 2 for row in range(40))
    assert labels.multi_tag_rows == multi
    for j, tag in enumerate(listed):
        ever = {r.row for r in reports if r.tag_id == tag and r.positive}
        assert set(labels.rows[labels.reported_positive[:, j]].tolist()) == ever


def test_without_implicit_negatives_a_tag_trains_on_its_own_reports() -> None:
    reports = [Report(0, 1, True), Report(1, 2, True), Report(2, 1, False), Report(2, 1, True), Report(3, 1, False)]
    rows, y, _ = build_labels(reports, [1, 2], implicit_negatives=False).column(0, 1.0)
    assert rows.tolist() == [0, 2, 3] and y.tolist() == [1, 1, 0]


def none_logit_by_loop(logits: np.ndarray, truth: np.ndarray) -> float:
    """The definition, one candidate cut at a time."""
    top, best = logits.argmax(axis=1), logits.max(axis=1)
    hit = truth[np.arange(len(truth)), top]
    positives = int(truth.sum())
    candidates = np.concatenate([[best.min() - 1e-6], np.unique(best) + 1e-6])
    scores = []
    for nu in candidates:
        answered = best >= nu
        tp = int(np.sum(answered & hit))
        f1 = 2 * tp / (int(answered.sum()) + positives) if answered.any() or positives else 0.0
        right = np.where(answered, hit, ~truth.any(axis=1))
        scores.append(f1 + float(right.mean()))
    values = np.array(scores)
    return float(candidates[np.flatnonzero(np.isclose(values, values.max()))[0]])


@pytest.mark.parametrize("seed", range(20))
def test_none_logit_equals_the_cut_by_cut_search(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 80)), int(rng.integers(1, 6))
    logits = np.round(rng.normal(size=(n, k)), int(rng.integers(0, 3)))  # rounding makes ties
    truth = rng.random((n, k)) < (0.0 if seed % 4 == 0 else rng.random())
    assert best_none_logit(logits, truth) == none_logit_by_loop(logits, truth)


@pytest.mark.parametrize("seed", range(10))
def test_average_precision_equals_scikit_learn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=(int(rng.integers(2, 200)), 4)), int(rng.integers(0, 3)))
    y = rng.random(scores.shape) < 0.3
    y[0] = True  # every column has a positive
    got = average_precision(scores, y)
    want = [average_precision_score(y[:, j], scores[:, j]) for j in range(scores.shape[1])]
    np.testing.assert_allclose(got, want, rtol=1e-12)
