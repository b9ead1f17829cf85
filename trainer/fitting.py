"""Fitting a dataset's multi-label head on frozen embeddings: pure numpy and scikit-learn, no I/O.

The method is described below; the cuts and figures themselves are in ``trainer.evaluation``.
"""

# Per tag, one-vs-rest logistic regression (implicit negatives: items positive for other tags) on centred,
# rescaled embeddings; C by k-fold CV (average precision) once a tag has 10+ examples of each class; one Platt
# map fitted on every tag's out-of-fold scores.
#
# Exclusive heads (2+ tags, no item reported positive for two): an item gets its top tag unless every tag's
# logit is under the head's "none" logit, so at most one tag; p = sigmoid(top logit - max(none, runner-up)),
# threshold 0.5. The none logit maximises out-of-fold micro-F1 + top-1 accuracy (lowest such cut), shrunk
# toward ``none_prior`` by ``prior_weight`` pseudo-examples per tag: with 2 examples the top tag is nearly
# always returned, since a CV cut on 2 examples is noise and every unknown answer costs accuracy; with 32
# the out-of-fold cut dominates. Other heads (multi-label): independent sigmoids, per-tag F1-maximising
# threshold on out-of-fold probabilities.

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold

from modelkit.heads import Head, exclusive_probabilities, sigmoid
from trainer.evaluation import (
    NULL_FIGURES,
    Counts,
    Folds,
    best_none_logit,
    best_threshold,
    count,
    cross_fitted_counts,
    micro_average,
)


@dataclass(frozen=True)
class FitConfig:
    """Knobs of the fit; defaults chosen on bench/heads.py's tuning splits (seeds 0-19), not its report splits."""

    cv_folds: int = 5
    # C is on features rescaled to unit RMS norm; weak regularisation ranked best on e5 embeddings.
    default_c: float = 100.0
    c_grid: tuple[float, ...] = (10.0, 100.0, 1000.0)
    grid_min_examples: int = 10  # picking C by CV is noise below this many examples of each class
    implicit_negatives: bool = True  # items positive for other tags count as negatives
    implicit_weight: float = 1.0
    max_iter: int = 1000
    seed: int = 0
    # Platt slopes stay bounded on tiny, perfectly separated folds.
    platt_c: float = 1.0
    calibration: Literal["pooled", "per_tag"] = "pooled"
    # "auto": a head of 2+ tags is exclusive (the tags compete, see modelkit.heads) when no item is
    # reported positive for two of them.
    exclusive: Literal["auto", "never"] = "auto"
    # The exclusive head's "none" logit: the out-of-fold choice shrunk toward none_prior by prior_weight
    # pseudo-examples per tag (with 2 examples the out-of-fold choice is noise: then the top tag wins).
    none_prior: float = -4.0
    prior_weight: float = 8.0


@dataclass(frozen=True)
class Report:
    """One label: the row of the item in the embedding matrix, the tag and its polarity."""

    row: int
    tag_id: int
    positive: bool


@dataclass(frozen=True)
class TagFit:
    """The fitted classifier of one tag, in the space of the raw (L2-normalised) embeddings."""

    tag_id: int
    weights: np.ndarray  # (dim,)
    bias: float
    calibration: tuple[float, float]
    threshold: float
    counts: Counts | None  # cross-validated, None when too few reports
    positives: int
    negatives: int
    c: float | None  # regularisation chosen; None for the prototype fallback
    method: str  # "logistic" | "prototype"

    @property
    def evaluation(self) -> dict[str, Any]:
        return self.counts.figures() if self.counts is not None else dict(NULL_FIGURES)


@dataclass(frozen=True)
class FitResult:
    tags: list[TagFit]
    dim: int
    report_count: int
    skipped: list[int] = field(default_factory=list)  # tags with no positive report: not in the head
    exclusive: bool = False  # at most one tag per item (no item was reported positive for two tags)
    none_logit: float = 0.0

    def head(self, model_id: str, version: int) -> Head:
        k = len(self.tags)
        return Head(
            model_id=model_id,
            version=version,
            tag_ids=np.array([t.tag_id for t in self.tags], dtype=np.int64),
            weights=(np.stack([t.weights for t in self.tags]) if k else np.zeros((0, self.dim))).astype(np.float32),
            bias=np.array([t.bias for t in self.tags], dtype=np.float32),
            calibration=np.array([t.calibration for t in self.tags], dtype=np.float32).reshape(k, 2),
            thresholds=np.array([t.threshold for t in self.tags], dtype=np.float32),
            exclusive=self.exclusive,
            none_logit=self.none_logit,
        )

    def dataset_evaluation(self, active: set[int] | None = None) -> dict[str, Any]:
        """Micro-average over the evaluated (active) tags; null figures when none could be evaluated."""
        return micro_average(t.counts for t in self.tags if active is None or t.tag_id in active)


class NothingToFit(ValueError):
    """No tag of the dataset has a positive report."""


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


def _platt(scores: np.ndarray, y: np.ndarray, config: FitConfig) -> tuple[float, float]:
    """(a, c) of sigmoid(a * score + c), fitted on out-of-fold scores with balanced classes."""
    mean, sd = float(scores.mean()), float(scores.std()) or 1.0
    z = ((scores - mean) / sd).reshape(-1, 1)
    model = LogisticRegression(C=config.platt_c, class_weight="balanced").fit(z, y)
    slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    return slope / sd, intercept - slope * mean / sd


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


def _labels(reports: Sequence[Report], tag_id: int, positives_by_row: Mapping[int, set[int]],
            config: FitConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, 0/1 labels and sample weights of one tag's training set."""
    label: dict[int, tuple[int, float]] = {}
    for r in reports:
        if r.tag_id == tag_id:
            label[r.row] = (1 if r.positive else 0, 1.0)
    if config.implicit_negatives:
        for row, tags in positives_by_row.items():
            if row not in label and tag_id not in tags:
                label[row] = (0, config.implicit_weight)
    rows = np.array(sorted(label), dtype=np.int64)
    y = np.array([label[r][0] for r in rows.tolist()], dtype=np.int64)
    w = np.array([label[r][1] for r in rows.tolist()], dtype=np.float64)
    return rows, y, w


def _prototype(vectors: np.ndarray, tag_id: int, rows: np.ndarray) -> TagFit:
    # No negatives at all: score by cosine to the positives' centroid, accepting what lies
    # about as close as the farthest positive (e5 cosines are compressed, hence the steep slope).
    centroid = vectors[rows].mean(axis=0)
    direction = centroid / (np.linalg.norm(centroid) or 1.0)
    cosines = vectors[rows] @ direction
    edge = float(cosines.min()) - 0.02
    slope = 50.0
    return TagFit(tag_id=tag_id, weights=direction, bias=0.0, calibration=(slope, -slope * edge),
                  threshold=0.5, counts=None, positives=len(rows), negatives=0, c=None, method="prototype")


@dataclass(frozen=True)
class _Scored:
    """Stage one of a tag's fit: final weights, and out-of-fold scores when there are enough reports."""

    tag_id: int
    weights: np.ndarray
    bias: float
    c: float
    rows: np.ndarray  # rows of the embedding matrix in this tag's training set
    y: np.ndarray
    scores: np.ndarray | None
    folds: Folds


def _score_tag(space: _Space, tag_id: int, rows: np.ndarray, y: np.ndarray, w: np.ndarray,
               config: FitConfig) -> _Scored:
    """Pick C, compute out-of-fold scores (stratified k-fold) and fit on every report."""
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    x = space.features[rows]
    k = min(config.cv_folds, n_pos, n_neg)
    chosen_c, scores, folds = config.default_c, None, []
    if k >= 2:
        folds = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=config.seed).split(x, y))
        grid = config.c_grid if min(n_pos, n_neg) >= config.grid_min_examples else (config.default_c,)
        best_ap = -1.0
        for c in grid:
            oof = _oof_scores(x, y, w, c, folds, config)
            ap = float(average_precision_score(y, oof)) if len(grid) > 1 else 0.0
            if scores is None or ap > best_ap + 1e-9:  # ties keep the smaller C
                best_ap, chosen_c, scores = ap, c, oof
    coef, intercept = _fit_lr(x, y, w, chosen_c, config)
    weights, bias = space.to_raw(coef, intercept)
    return _Scored(tag_id=tag_id, weights=weights, bias=bias, c=chosen_c, rows=rows, y=y, scores=scores,
                   folds=folds)


def _finish(scored: _Scored, calibration: tuple[float, float], probs: np.ndarray | None,
            exclusive: bool) -> TagFit:
    """Threshold and cross-validated counts on the tag's out-of-fold probabilities (None: too few reports)."""
    n_pos = int(scored.y.sum())
    n_neg = len(scored.y) - n_pos
    threshold, counts = 0.5, None
    if probs is not None and exclusive:
        # Exclusive: a tag is returned when it is the top tag and beats "none", i.e. p >= 0.5.
        counts = count(probs >= threshold, scored.y)
    elif probs is not None:
        threshold = best_threshold(probs, scored.y)
        counts = cross_fitted_counts(probs, scored.y, scored.folds)
    return TagFit(tag_id=scored.tag_id, weights=scored.weights, bias=scored.bias, calibration=calibration,
                  threshold=threshold, counts=counts, positives=n_pos, negatives=n_neg, c=scored.c,
                  method="logistic")


def _oof_logits(x: np.ndarray, scored: Sequence[_Scored], calibrations: Sequence[tuple[float, float]]) -> np.ndarray:
    """Calibrated logits of every tag at every row: out-of-fold where the tag has them, else its final fit."""
    raw = np.empty((x.shape[0], len(scored)))
    for j, s in enumerate(scored):
        raw[:, j] = x @ s.weights + s.bias
        if s.scores is not None:
            raw[s.rows, j] = s.scores
    cal = np.array(calibrations, dtype=np.float64).reshape(len(scored), 2)
    out: np.ndarray = cal[:, 0] * raw + cal[:, 1]
    return out


def _calibrate(x: np.ndarray, scored: Sequence[_Scored],
               config: FitConfig) -> tuple[list[tuple[float, float]], np.ndarray]:
    """Each tag's Platt map and the calibrated (mostly out-of-fold) logits of every tag at every row."""
    with_oof = [s for s in scored if s.scores is not None]
    pooled = (1.0, 0.0)
    if with_oof:
        # One Platt map for every tag keeps their order as the linear scores rank them (it ranked
        # the right tag first more often than per-tag maps, see bench/heads.py).
        pooled = _platt(np.concatenate([s.scores for s in with_oof if s.scores is not None]),
                        np.concatenate([s.y for s in with_oof]), config)
    calibrations = [_platt(s.scores, s.y, config) if config.calibration == "per_tag" and s.scores is not None
                    else pooled for s in scored]
    return calibrations, _oof_logits(x, scored, calibrations)


def fit_head(vectors: np.ndarray, reports: Sequence[Report], tag_ids: Sequence[int],
             config: FitConfig | None = None) -> FitResult:
    """Fit every tag of ``tag_ids`` that has a positive report; CPU-bound, run it in a thread."""
    config = config or FitConfig()
    x = np.asarray(vectors, dtype=np.float64)
    if not reports:
        raise NothingToFit("the dataset has no reports")
    space = _Space(x, sorted({r.row for r in reports}))
    positives_by_row: dict[int, set[int]] = {}
    for r in reports:
        if r.positive:
            positives_by_row.setdefault(r.row, set()).add(r.tag_id)
    prototypes: dict[int, TagFit] = {}
    labelled: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    skipped: list[int] = []
    for tag_id in tag_ids:
        rows, y, w = _labels(reports, tag_id, positives_by_row, config)
        if not y.any():
            skipped.append(tag_id)
        elif y.all():
            prototypes[tag_id] = _prototype(x, tag_id, rows)
        else:
            labelled.append((tag_id, rows, y, w))
    if not labelled and not prototypes:
        raise NothingToFit("no tag has a positive report")
    # Implicit negatives already assume that a tag missing from an item's reports is absent from it;
    # when no item carries two tags, the head answers with at most one tag (or unknown) per item.
    exclusive = (config.exclusive == "auto" and not prototypes and len(labelled) >= 2
                 and all(len(tags) < 2 for tags in positives_by_row.values()))
    scored = [_score_tag(space, tag_id, rows, y, w, config) for tag_id, rows, y, w in labelled]
    calibrations, logits = _calibrate(x, scored, config)
    none_logit = 0.0
    if exclusive and any(s.scores is not None for s in scored):
        reported = np.array(sorted({r.row for r in reports}))
        truth = np.array([[s.tag_id in positives_by_row.get(int(row), ()) for s in scored] for row in reported])
        per_tag = float(np.median([int(s.y.sum()) for s in scored]))
        m = config.prior_weight
        none_logit = (per_tag * best_none_logit(logits[reported], truth) + m * config.none_prior) / (per_tag + m)
    probs = exclusive_probabilities(logits, none_logit) if exclusive else sigmoid(logits)
    fitted = dict(prototypes)
    for j, s in enumerate(scored):
        fitted[s.tag_id] = _finish(s, calibrations[j], probs[s.rows, j] if s.scores is not None else None,
                                   exclusive)
    return FitResult(tags=[fitted[t] for t in tag_ids if t in fitted], dim=x.shape[1], report_count=len(reports),
                     skipped=skipped, exclusive=exclusive, none_logit=none_logit)
