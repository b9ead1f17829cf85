"""Fitting on small labelled sets: what the fitted head answers and which figures each tag gets."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from modelkit.heads import Head, tag_vectors
from shared.schemas.inference import UNKNOWN_TAG_ID, TagRef
from trainer.evaluation import Counts
from trainer.fitting import FitConfig, NothingToFit, Report, fit_head

DIM = 32


def clusters(n_per: list[int], seed: int = 0, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors around one centre per group; returns (vectors, group of each row, centres)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(n_per), DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    groups = np.repeat(np.arange(len(n_per)), n_per)
    x = centres[groups] + noise * rng.normal(size=(len(groups), DIM)) / np.sqrt(DIM)
    return x / np.linalg.norm(x, axis=1, keepdims=True), groups, centres


def near(centre: np.ndarray, seed: int, n: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = centre + 0.3 * rng.normal(size=(n, DIM)) / np.sqrt(DIM)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_two_examples_per_tag_train_and_predict() -> None:
    x, groups, centres = clusters([2, 2])
    reports = [Report(i, 10 + int(g), True) for i, g in enumerate(groups)]
    result = fit_head(x, reports, [10, 11])
    head = result.head("m", 1)
    for t, centre in enumerate(centres):
        probs = head.probabilities(near(centre, seed=t + 5))
        assert (probs.argmax(axis=1) == t).all()
        assert (probs[:, t] >= head.thresholds[t]).all()
    # Two positives and two implicit negatives: two folds, so every tag has figures.
    assert all(fit.evaluation["f1"] is not None for fit in result.tags)
    assert result.dataset_evaluation()["precision"] is not None


def test_single_positive_gives_null_figures_and_default_threshold() -> None:
    x, groups, _ = clusters([1, 5, 5])
    reports = [Report(i, 10 + int(g), True) for i, g in enumerate(groups)]
    result = fit_head(x, reports, [10, 11, 12])
    lone = next(t for t in result.tags if t.tag_id == 10)
    assert lone.evaluation == {"recall": None, "precision": None, "f1": None}
    assert lone.threshold == 0.5
    busy = next(t for t in result.tags if t.tag_id == 11)
    assert busy.evaluation["recall"] is not None


def test_every_reported_example_is_evaluated_exactly_once() -> None:
    # k = min(cv_folds, positives, negatives) = 3 here: still each example is predicted once.
    x, groups, _ = clusters([3, 20])
    reports = [Report(i, 10 + int(g), True) for i, g in enumerate(groups)]
    result = fit_head(x, reports, [10, 11], FitConfig(cv_folds=5))
    counts = next(t for t in result.tags if t.tag_id == 10).counts
    assert counts is not None
    assert counts.tp + counts.fn == 3 and counts.fp + counts.tn == 20


def test_only_positives_falls_back_to_similarity() -> None:
    x, groups, centres = clusters([6, 6])
    reports = [Report(i, 10, True) for i in np.flatnonzero(groups == 0)]
    result = fit_head(x, reports, [10])
    head = result.head("m", 1)
    assert result.tags[0].method == "prototype" and result.tags[0].counts is None
    assert (head.probabilities(near(centres[0], seed=3))[:, 0] >= head.thresholds[0]).all()
    assert (head.probabilities(x[groups == 1])[:, 0] < head.thresholds[0]).all()


def test_explicit_negatives_shape_the_boundary() -> None:
    x, groups, centres = clusters([6, 6])
    # Tag 10 is reported positive on group 0 and negative on group 1; nothing else is labelled.
    reports = [Report(i, 10, bool(g == 0)) for i, g in enumerate(groups)]
    result = fit_head(x, reports, [10])
    head = result.head("m", 1)
    assert result.tags[0].method == "logistic"
    assert (head.probabilities(near(centres[0], seed=8))[:, 0] >= head.thresholds[0]).all()
    assert (head.probabilities(near(centres[1], seed=9))[:, 0] < head.thresholds[0]).all()


def test_tag_without_positive_is_left_out_and_none_at_all_is_an_error() -> None:
    x, _, _ = clusters([4, 4])
    reports = [Report(i, 10, True) for i in range(4)] + [Report(i, 11, False) for i in range(4, 8)]
    result = fit_head(x, reports, [10, 11])
    assert [t.tag_id for t in result.tags] == [10] and result.skipped == [11]
    with pytest.raises(NothingToFit):
        fit_head(x, [Report(i, 11, False) for i in range(8)], [10, 11])


def test_micro_average_counts_only_active_tags() -> None:
    x, groups, _ = clusters([5, 5, 5], noise=1.6)
    reports = [Report(i, 10 + int(g), True) for i, g in enumerate(groups)]
    result = fit_head(x, reports, [10, 11, 12])
    by_tag = {t.tag_id: t.counts for t in result.tags}
    assert all(c is not None for c in by_tag.values())
    total = Counts()
    for tag_id in (10, 11):
        c = by_tag[tag_id]
        assert c is not None
        total = total + c
    assert result.dataset_evaluation({10, 11}) == total.figures()


def test_reduced_space_fit_equals_full_space_fit() -> None:
    # Few items, many dimensions: the head is fitted in the span of the items; it must score
    # exactly as a logistic regression fitted on every dimension would.
    x, groups, _ = clusters([4, 5])
    reports = [Report(i, 10, bool(g == 0)) for i, g in enumerate(groups)]
    fit = fit_head(x, reports, [10], FitConfig(default_c=100.0)).tags[0]
    centred = x - x.mean(axis=0)
    scale = np.sqrt(np.mean(np.sum(centred**2, axis=1)))
    full = LogisticRegression(C=100.0, class_weight="balanced", max_iter=10_000, tol=1e-10)
    full.fit(centred / scale, groups == 0)
    np.testing.assert_allclose(x @ fit.weights + fit.bias, full.decision_function(centred / scale), atol=1e-3)


def test_single_label_reports_give_one_tag_per_item_and_unknown_far_away() -> None:
    # 16 examples a tag: enough for the out-of-fold "none" cut to outweigh the prior (see FitConfig).
    x, groups, centres = clusters([16, 16, 16])
    reports = [Report(i, 10 + int(g), True) for i, g in enumerate(groups)]
    result = fit_head(x, reports, [10, 11, 12])
    head = result.head("m", 1)
    assert head.exclusive and result.exclusive
    refs = [TagRef(id=t, title=f"tag {t}") for t in (10, 11, 12)]
    for t, centre in enumerate(centres):
        rows = tag_vectors(head, near(centre, seed=20 + t), refs)
        assert all([tag.id for tag in row] == [10 + t] for row in rows)
    # Opposite every tag's examples: no tag should claim it.
    away = -centres.sum(axis=0, keepdims=True)
    assert tag_vectors(head, away / np.linalg.norm(away), refs)[0][0].id == UNKNOWN_TAG_ID
    assert all(fit.threshold == 0.5 and fit.evaluation["f1"] is not None for fit in result.tags)


def test_items_with_two_tags_keep_independent_tags() -> None:
    x, groups, centres = clusters([6, 6])
    both = x[groups == 0][:3] + x[groups == 1][:3]
    x = np.concatenate([x, both / np.linalg.norm(both, axis=1, keepdims=True)])
    reports = [Report(i, 10 + int(g), True) for i, g in enumerate(groups)]
    reports += [Report(12 + i, tag, True) for i in range(3) for tag in (10, 11)]
    head = fit_head(x, reports, [10, 11]).head("m", 1)
    assert not head.exclusive
    mixed = centres[0] + centres[1]
    probs = head.probabilities(mixed / np.linalg.norm(mixed))
    assert (probs[0] >= head.thresholds).all()  # both tags of an item like the doubly tagged ones


def test_heads_of_format_1_still_load() -> None:
    x, groups, _ = clusters([4, 4])
    head = fit_head(x, [Report(i, 10 + int(g), True) for i, g in enumerate(groups)], [10, 11]).head("m", 3)
    back = Head.from_bytes(head.to_bytes())
    assert back.exclusive and back.none_logit == pytest.approx(head.none_logit)
    np.testing.assert_allclose(back.probabilities(x), head.probabilities(x), rtol=1e-6)
    old = io.BytesIO()  # what the trainer wrote before exclusive heads: independent sigmoids
    np.savez(old, meta=np.frombuffer(json.dumps({"format": 1, "model_id": "m", "version": 2}).encode(), np.uint8),
             tag_ids=head.tag_ids, weights=head.weights, bias=head.bias, calibration=head.calibration,
             thresholds=head.thresholds)
    legacy = Head.from_bytes(old.getvalue())
    assert not legacy.exclusive and legacy.version == 2
    z = (x @ head.weights.T + head.bias) * head.calibration[:, 0] + head.calibration[:, 1]
    np.testing.assert_allclose(legacy.probabilities(x), 1 / (1 + np.exp(-z)), rtol=1e-5)
