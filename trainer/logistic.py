"""The small-dataset path: one-vs-rest logistic regression per tag, C by stratified k-fold CV."""

# Per tag, logistic regression (balanced class weights, implicit negatives: items positive for other tags)
# on centred, rescaled embeddings; C by k-fold CV (average precision) once a tag has 10+ examples of each
# class. Few-shot heads are where this beats a plain LogisticRegression (bench/heads.py); above
# FitConfig.ridge_min_rows and ridge_min_cells trainer.ridge takes over.

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold

from trainer.evaluation import Folds
from trainer.fitresult import FitConfig, Scored, TagFit
from trainer.labels import Labels


def _logistic(c: float, dim: int, config: FitConfig) -> LogisticRegression:
    # Newton steps are exact and fast in the reduced space of a few-shot dataset; lbfgs scales better
    # once there are more items than dimensions.
    solver = "newton-cholesky" if dim <= 128 else "lbfgs"
    return LogisticRegression(C=c, class_weight="balanced", max_iter=config.max_iter, solver=solver)


def _fit_lr(x: np.ndarray, y: np.ndarray, w: np.ndarray, c: float, config: FitConfig) -> tuple[np.ndarray, float]:
    with warnings.catch_warnings():
        # Separable few-shot data never "converges" in the strict sense; the solution is still usable.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = _logistic(c, x.shape[1], config).fit(x, y, sample_weight=w)
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])


def _oof_scores(x: np.ndarray, y: np.ndarray, w: np.ndarray, c: float, folds: Folds,
                config: FitConfig) -> np.ndarray:
    scores = np.zeros(len(y))
    for train, test in folds:
        coef, intercept = _fit_lr(x[train], y[train], w[train], c, config)
        scores[test] = x[test] @ coef + intercept
    return scores


class _Space:
    """Centred, rescaled feature space (in the span of the reported items); maps fold back to raw space."""

    def __init__(self, vectors: np.ndarray, fit_rows: Sequence[int]) -> None:
        # Learned from every reported item, not per fold: it uses no labels.
        fit = vectors[list(fit_rows)]
        self.mean = fit.mean(axis=0)
        centred = fit - self.mean
        rms = float(np.sqrt(np.mean(np.sum(centred * centred, axis=1))))
        self.scale = rms if rms > 1e-8 else 1.0
        self.basis: np.ndarray | None = None
        if len(fit) < vectors.shape[1]:
            # With fewer items than dimensions an L2-penalised weight vector lies in the span of the
            # (centred) items, so fitting in an orthonormal basis of that span is exact and far cheaper.
            _, sv, vt = np.linalg.svd(centred / self.scale, full_matrices=False)
            keep = sv > 1e-8 * max(float(sv.max(initial=0.0)), 1e-12)
            self.basis = vt[keep].T
        features = (vectors - self.mean) / self.scale
        self.features = features @ self.basis if self.basis is not None else features

    def to_raw(self, coef: np.ndarray, intercept: float) -> tuple[np.ndarray, float]:
        full = self.basis @ coef if self.basis is not None else coef
        weights = full / self.scale
        return weights, float(intercept - weights @ self.mean)


def prototype(tag_id: int, positives: np.ndarray) -> TagFit:
    """A tag with positives only: cosine to their centroid, accepting what lies about as close as the farthest."""
    # e5 cosines are compressed, hence the steep slope.
    centroid = positives.mean(axis=0)
    direction = centroid / (np.linalg.norm(centroid) or 1.0)
    cosines = positives @ direction
    edge = float(cosines.min()) - 0.02
    slope = 50.0
    return TagFit(tag_id=tag_id, weights=direction, bias=0.0, calibration=(slope, -slope * edge),
                  threshold=0.5, counts=None, positives=len(positives), negatives=0, c=None, method="prototype")


def _score_tag(space: _Space, rows: np.ndarray, y: np.ndarray, w: np.ndarray,
               config: FitConfig) -> tuple[np.ndarray, float, float, np.ndarray | None, np.ndarray]:
    """Pick C, compute out-of-fold scores (stratified k-fold) and fit on every report of one tag."""
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    x = space.features[rows]
    k = min(config.cv_folds, n_pos, n_neg)
    chosen_c, scores = config.default_c, None
    fold_of = np.full(len(y), -1, dtype=np.int8)
    if k >= 2:
        folds = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=config.seed).split(x, y))
        for i, (_, test) in enumerate(folds):
            fold_of[test] = i
        grid = config.c_grid if min(n_pos, n_neg) >= config.grid_min_examples else (config.default_c,)
        best_ap = -1.0
        for c in grid:
            oof = _oof_scores(x, y, w, c, folds, config)
            ap = float(average_precision_score(y, oof)) if len(grid) > 1 else 0.0
            if scores is None or ap > best_ap + 1e-9:  # ties keep the smaller C
                best_ap, chosen_c, scores = ap, c, oof
    coef, intercept = _fit_lr(x, y, w, chosen_c, config)
    weights, bias = space.to_raw(coef, intercept)
    return weights, bias, chosen_c, scores, fold_of


def score_logistic(x: np.ndarray, labels: Labels, columns: Sequence[int], config: FitConfig) -> Scored:
    """Every listed column's logistic regression, one tag after another."""
    space = _Space(x, labels.rows.tolist())
    n, k = len(labels.rows), len(columns)
    oof = np.full((n, k), np.nan)
    folds = np.full((n, k), -1, dtype=np.int8)
    weights, biases, cs = np.zeros((k, x.shape[1])), np.zeros(k), []
    for j, col in enumerate(columns):
        rows, y, w = labels.column(col, config.implicit_weight)
        present = np.flatnonzero(labels.codes[:, col] >= 0)
        weights[j], biases[j], c, scores, fold_of = _score_tag(space, rows, y, w, config)
        cs.append(c)
        if scores is not None:
            oof[present, j] = scores
            folds[present, j] = fold_of
    return Scored(columns=list(columns), weights=weights, bias=biases, c=cs, method="logistic", oof=oof,
                  folds=folds)
