"""The large-dataset path (trainer.ridge): when it is taken, what it answers, and that its algebra is ridge."""

from __future__ import annotations

import numpy as np
import pytest

from modelkit.heads import tag_vectors
from shared.schemas.inference import UNKNOWN_TAG_ID, TagRef
from trainer.fitting import FitConfig, Report, fit_head, uses_ridge
from trainer.labels import build_labels
from trainer.ridge import score_ridge

DIM = 32
RIDGE = FitConfig(ridge_min_rows=0, ridge_min_cells=0)


def clusters(n_per: list[int], seed: int = 0, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors around one centre per group, sharing a strong common direction as e5's do."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=DIM)
    centres = rng.normal(size=(len(n_per), DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    groups = np.repeat(np.arange(len(n_per)), n_per)
    x = 2 * common / np.linalg.norm(common) + centres[groups]
    x += noise * rng.normal(size=(len(groups), DIM)) / np.sqrt(DIM)
    return x / np.linalg.norm(x, axis=1, keepdims=True), groups, centres


def single_label(groups: np.ndarray) -> list[Report]:
    return [Report(i, 10 + int(g), True) for i, g in enumerate(groups)]


def test_switch_takes_ridge_only_for_large_datasets_with_one_shared_training_set() -> None:
    config = FitConfig()
    assert not uses_ridge(499, 1000, config)  # too few items, however many tags
    assert not uses_ridge(1000, 19, config)  # items x tags under the cells threshold: a few seconds per-tag
    assert uses_ridge(1000, 20, config) and uses_ridge(100_000, 200, config)
    assert not uses_ridge(100_000, 200, FitConfig(implicit_weight=0.5))  # tags' training sets differ in weights


def test_default_config_fits_a_large_dataset_with_ridge_and_a_small_one_per_tag() -> None:
    x, groups, _ = clusters([15] * 40, seed=1)  # 600 items x 40 tags: over both thresholds
    large = fit_head(x, single_label(groups), [10 + t for t in range(40)])
    assert {t.method for t in large.tags} == {"ridge"} and large.exclusive
    small = fit_head(x[:60], single_label(groups[:60]), [10 + t for t in range(4)])
    assert {t.method for t in small.tags} == {"logistic"}


def test_ridge_recovers_separable_tags_on_held_out_items() -> None:
    x, groups, centres = clusters([40, 60, 80, 120], seed=2)
    result = fit_head(x, single_label(groups), [10, 11, 12, 13], RIDGE)
    head = result.head("m", 1)
    assert head.exclusive and {t.method for t in result.tags} == {"ridge"}
    refs = [TagRef(id=10 + t, title=f"tag {t}") for t in range(4)]
    rng = np.random.default_rng(3)
    for t, centre in enumerate(centres):
        fresh = x[groups == t].mean(axis=0) + 0.3 * rng.normal(size=(20, DIM)) / np.sqrt(DIM)
        fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
        answers = [row[0].id for row in tag_vectors(head, fresh, refs)]
        # Never another tag; now and then unknown, which the "none" cut learned out of fold allows.
        assert set(answers) <= {10 + t, UNKNOWN_TAG_ID} and answers.count(10 + t) >= 18
        assert float(np.dot(centre, head.weights[t])) > 0
    for fit in result.tags:  # cross-validated figures of every tag: each example judged out of fold
        assert fit.evaluation["f1"] >= 95.0
        assert fit.counts is not None and fit.counts.tp + fit.counts.fn == fit.positives


def test_ridge_fits_are_deterministic() -> None:
    x, groups, _ = clusters([30, 50, 70], seed=4, noise=1.5)
    reports = single_label(groups)
    a, b = (fit_head(x, reports, [10, 11, 12], RIDGE).head("m", 1) for _ in range(2))
    for field in ("weights", "bias", "calibration", "thresholds"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.none_logit == b.none_logit


def balanced_ridge(features: np.ndarray, y: np.ndarray, penalty_alpha: float) -> tuple[np.ndarray, float]:
    """Textbook ridge on targets +n/2n_pos, -n/2n_neg with the intercept halfway between the class means."""
    n = len(y)
    z = np.where(y, n / (2 * y.sum()), -n / (2 * (n - y.sum())))
    centred = features - features.mean(axis=0)
    gram = centred.T @ centred
    w = np.linalg.solve(gram + penalty_alpha * np.trace(gram) / features.shape[1] * np.eye(features.shape[1]),
                        centred.T @ z)
    return w, float(-w @ (features[y].mean(axis=0) + features[~y].mean(axis=0)) / 2)


def test_ridge_weights_are_the_closed_form_solution_in_raw_space() -> None:
    # The Gram sums, per-fold downdates and the eigendecomposition must give ridge's textbook answer.
    x, groups, _ = clusters([25, 35, 45], seed=5, noise=1.2)
    fit = fit_head(x, single_label(groups), [10, 11, 12], RIDGE)
    mean = x.mean(axis=0)
    scale = np.sqrt(np.mean(np.sum((x - mean) ** 2, axis=1)))
    for t, tag in enumerate(fit.tags):
        w, b = balanced_ridge((x - mean) / scale, groups == t, tag.c or 0.0)
        np.testing.assert_allclose(x @ tag.weights + tag.bias, (x - mean) / scale @ w + b, atol=1e-6)


def test_an_item_reported_only_as_a_negative_trains_that_tag_alone() -> None:
    # Item 0 has no positive report: it is a negative of tag 12 (explicit) but in no other tag's training set.
    x, groups, _ = clusters([1, 30, 40, 50], seed=6, noise=1.2)
    reports = [Report(0, 12, False)] + [Report(i, 10 + int(g), True) for i, g in enumerate(groups) if i > 0]
    fit = {t.tag_id: t for t in fit_head(x, reports, [11, 12, 13], RIDGE).tags}
    assert fit[12].positives + fit[12].negatives == 121 and fit[11].positives + fit[11].negatives == 120
    rest = x[1:]
    mean = x.mean(axis=0)  # features are centred and rescaled on every reported item, item 0 included
    scale = np.sqrt(np.mean(np.sum((x - mean) ** 2, axis=1)))
    w, b = balanced_ridge((x - mean) / scale, groups == 2, fit[12].c or 0.0)
    np.testing.assert_allclose(x @ fit[12].weights + fit[12].bias, (x - mean) / scale @ w + b, atol=1e-6)
    w, b = balanced_ridge((rest - mean) / scale, groups[1:] == 1, fit[11].c or 0.0)
    np.testing.assert_allclose(rest @ fit[11].weights + fit[11].bias, (rest - mean) / scale @ w + b, atol=1e-6)


def test_items_with_two_tags_give_a_multi_label_ridge_head() -> None:
    x, groups, _ = clusters([40, 40, 40], seed=7)
    both = (x[groups == 0][:15] + x[groups == 1][:15]) / 2
    x = np.concatenate([x, both / np.linalg.norm(both, axis=1, keepdims=True)])
    reports = single_label(groups) + [Report(120 + i, tag, True) for i in range(15) for tag in (10, 11)]
    result = fit_head(x, reports, [10, 11, 12], RIDGE)
    head = result.head("m", 1)
    assert not head.exclusive and {t.method for t in result.tags} == {"ridge"}
    mixed = (x[120:] + 0.05 * np.random.default_rng(8).normal(size=(15, DIM)) / np.sqrt(DIM))
    passed = head.probabilities(mixed / np.linalg.norm(mixed, axis=1, keepdims=True)) >= head.thresholds
    assert passed[:, :2].mean() >= 0.9 and not passed[:, 2].any()
    assert all(t.counts is not None for t in result.tags)


@pytest.mark.parametrize("positives", [1, 3])
def test_a_rare_tag_in_a_ridge_fit_is_kept_with_figures_only_when_cross_validated(positives: int) -> None:
    x, groups, _ = clusters([positives, 60, 60], seed=9)
    result = fit_head(x, single_label(groups), [10, 11, 12], RIDGE)
    rare = next(t for t in result.tags if t.tag_id == 10)
    assert rare.method == "ridge" and rare.positives == positives
    assert (rare.counts is None) == (positives < 2)
    if positives == 1:
        assert rare.threshold == 0.5 and rare.evaluation["f1"] is None


def test_out_of_fold_scores_come_from_fits_without_the_fold() -> None:
    # What calibration, thresholds and the dataset figures rest on: each row scored by a model that never saw it.
    x, groups, _ = clusters([20, 30, 40], seed=10, noise=1.5)
    labels = build_labels(single_label(groups), [10, 11, 12], implicit_negatives=True)
    scored = score_ridge(x, labels, [0, 1, 2], RIDGE)
    mean = x.mean(axis=0)
    features = (x - mean) / np.sqrt(np.mean(np.sum((x - mean) ** 2, axis=1)))
    for t in range(3):
        fold_of = scored.folds[:, t]
        per_fold = np.bincount(fold_of[groups == t], minlength=RIDGE.cv_folds)
        assert per_fold.max() - per_fold.min() <= 1  # stratified: each fold holds its share of the positives
        for f in range(RIDGE.cv_folds):
            train, test = fold_of != f, fold_of == f
            w, b = balanced_ridge(features[train], groups[train] == t, scored.c[t])
            np.testing.assert_allclose(scored.oof[test, t], features[test] @ w + b, atol=1e-4)
