"""Stage two of a fit, the same for every scorer: Platt calibration, the "none" logit, thresholds and figures."""

# One Platt map fitted on every tag's out-of-fold scores (per tag with calibration="per_tag").
# Exclusive heads (2+ tags, no item reported positive for two): an item gets its top tag unless every tag's
# logit is under the head's "none" logit, so at most one tag; p = sigmoid(top logit - max(none, runner-up)),
# threshold 0.5. The none logit maximises out-of-fold micro-F1 + top-1 accuracy (lowest such cut), shrunk
# toward ``none_prior`` by ``prior_weight`` pseudo-examples per tag: with 2 examples the top tag is nearly
# always returned, since a CV cut on 2 examples is noise and every unknown answer costs accuracy; with 32
# the out-of-fold cut dominates. Other heads (multi-label): independent sigmoids, per-tag F1-maximising
# threshold on out-of-fold probabilities.

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression

from modelkit.heads import exclusive_probabilities, sigmoid
from trainer.evaluation import (
    Counts,
    best_none_logit,
    best_threshold,
    count,
    cross_fitted_counts,
    exclusive_confusion,
)
from trainer.fitresult import FitConfig, Scored, TagFit
from trainer.labels import NEGATIVE, POSITIVE, Labels

# A two-parameter map needs no more points than this; above it each class is sampled (balanced class
# weights keep the fit unbiased), so a 100k x 200 head does not fit 20M points.
PLATT_MAX_POINTS = 400_000
_ROW_CHUNK = 4096  # rows per block of the probabilities: the exclusive map holds several (rows, tags) temporaries


def _platt(scores: np.ndarray, y: np.ndarray, config: FitConfig) -> tuple[float, float]:
    """(a, c) of sigmoid(a * score + c), fitted on out-of-fold scores with balanced classes."""
    scores = np.asarray(scores, dtype=np.float64)  # ridge's scores are float32: sums in float64
    mean, sd = float(scores.mean()), float(scores.std()) or 1.0
    z = ((scores - mean) / sd).reshape(-1, 1)
    model = LogisticRegression(C=config.platt_c, class_weight="balanced").fit(z, y)
    slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    return slope / sd, intercept - slope * mean / sd


def _pooled_points(oof: np.ndarray, y: np.ndarray, config: FitConfig) -> tuple[np.ndarray, np.ndarray]:
    """Every tag's out-of-fold scores and labels, tag after tag; each class sampled above PLATT_MAX_POINTS."""
    present = ~np.isnan(oof)
    total, positives = int(present.sum()), int((present & y).sum())
    if total <= PLATT_MAX_POINTS:
        return oof.T[present.T], y.T[present.T].astype(np.int64)
    rng = np.random.default_rng(config.seed)
    share = {True: min(1.0, PLATT_MAX_POINTS / 2 / max(positives, 1)),
             False: min(1.0, PLATT_MAX_POINTS / 2 / max(total - positives, 1))}
    scores, labels = [], []
    for j in range(oof.shape[1]):
        s, t = oof[present[:, j], j], y[present[:, j], j]
        keep = rng.random(len(s)) < np.where(t, share[True], share[False])
        scores.append(s[keep])
        labels.append(t[keep])
    return np.concatenate(scores), np.concatenate(labels).astype(np.int64)


def calibrate(scored: Scored, y: np.ndarray, config: FitConfig) -> np.ndarray:
    """(k, 2) Platt maps: one pooled over every tag with out-of-fold scores, or one per such tag."""
    has_oof = ~np.isnan(scored.oof).all(axis=0)
    pooled = (1.0, 0.0)
    if has_oof.any():
        # One Platt map for every tag keeps their order as the linear scores rank them (it ranked
        # the right tag first more often than per-tag maps, see bench/heads.py).
        oof, labels = (scored.oof, y) if has_oof.all() else (scored.oof[:, has_oof], y[:, has_oof])
        pooled = _platt(*_pooled_points(oof, labels, config), config)
    maps = []
    for j in range(len(scored.columns)):
        if config.calibration == "per_tag" and has_oof[j]:
            present = ~np.isnan(scored.oof[:, j])
            maps.append(_platt(scored.oof[present, j], y[present, j].astype(np.int64), config))
        else:
            maps.append(pooled)
    return np.array(maps, dtype=np.float64).reshape(len(scored.columns), 2)


def _logits(x: np.ndarray, scored: Scored, calibrations: np.ndarray) -> np.ndarray:
    """Calibrated logits at the reported rows: out-of-fold where a tag has them, else its final fit."""
    raw = scored.oof.astype(np.float64)
    for j in np.flatnonzero(np.isnan(raw).any(axis=0)):
        gap = np.isnan(raw[:, j])
        raw[gap, j] = x[gap] @ scored.weights[j] + scored.bias[j]
    raw *= calibrations[:, 0]
    raw += calibrations[:, 1]
    return raw


def _probabilities(logits: np.ndarray, exclusive: bool, none_logit: float) -> np.ndarray:
    """The probabilities of ``logits``, written over them (no second (rows, tags) array), in row blocks."""
    for start in range(0, len(logits), _ROW_CHUNK):
        block = logits[start:start + _ROW_CHUNK]
        block[...] = exclusive_probabilities(block, none_logit) if exclusive else sigmoid(block)
    return logits


def _counts(probs: np.ndarray, y: np.ndarray, fold_of: np.ndarray, exclusive: bool) -> tuple[float, Counts]:
    if exclusive:
        # Exclusive: a tag is returned when it is the top tag and beats "none", i.e. p >= 0.5.
        return 0.5, count(probs >= 0.5, y)
    folds = [(np.flatnonzero(fold_of != i), np.flatnonzero(fold_of == i)) for i in range(int(fold_of.max()) + 1)]
    return best_threshold(probs, y), cross_fitted_counts(probs, y, folds)


def finish(x: np.ndarray, labels: Labels, scored: Scored, exclusive: bool, config: FitConfig,
           real_rows: int | None = None) -> tuple[list[TagFit], float, np.ndarray | None]:
    """Each scored tag's calibrated classifier and figures, the head's none logit and, for an exclusive head
    with out-of-fold scores, its confusion matrix (``exclusive_confusion``, in the order of ``scored.columns``).

    ``x``: the embeddings of ``labels.rows``, in that order. Rows of the embedding matrix from ``real_rows`` on
    are pseudo-examples (tag titles): they shape the calibration and the none logit like any report, but the
    thresholds, figures, counts and suggestion rows come from the real rows only.
    """
    y = labels.codes[:, scored.columns] == POSITIVE
    calibrations = calibrate(scored, y, config)
    logits = _logits(x, scored, calibrations)
    has_oof = ~np.isnan(scored.oof).all(axis=0)
    none_logit = 0.0
    if exclusive and has_oof.any():
        truth = labels.reported_positive[:, scored.columns]
        per_tag = float(np.median(y.sum(axis=0)))
        m = config.prior_weight
        none_logit = (per_tag * best_none_logit(logits, truth) + m * config.none_prior) / (per_tag + m)
    probs = _probabilities(logits, exclusive, none_logit)
    real = labels.rows < real_rows if real_rows is not None else np.ones(len(labels.rows), dtype=bool)
    # The same probabilities as the per-tag counts: out-of-fold wherever a tag has them.
    matrix = None
    if exclusive and has_oof.any():  # (a copy of probs only when title rows must be left out)
        matrix = exclusive_confusion(probs, y) if real.all() else exclusive_confusion(probs[real], y[real])
    fits = []
    for j, col in enumerate(scored.columns):
        present = (labels.codes[:, col] >= 0) & real
        y_j = y[present, j].astype(np.int64)
        n_pos = int(y_j.sum())
        threshold, counts = 0.5, None
        oof_rows = oof_probabilities = None
        if has_oof[j]:
            threshold, counts = _counts(probs[present, j], y_j, scored.folds[present, j], exclusive)
            explicit = np.flatnonzero(np.isin(labels.codes[:, col], (POSITIVE, NEGATIVE))
                                      & ~np.isnan(scored.oof[:, j]) & present)
            oof_rows, oof_probabilities = labels.rows[explicit], probs[explicit, j].astype(np.float32)
        fits.append(TagFit(tag_id=labels.tag_ids[col], weights=scored.weights[j], bias=float(scored.bias[j]),
                           calibration=(float(calibrations[j, 0]), float(calibrations[j, 1])), threshold=threshold,
                           counts=counts, positives=n_pos, negatives=len(y_j) - n_pos, c=scored.c[j],
                           method=scored.method, oof_rows=oof_rows, oof_probabilities=oof_probabilities))
    return fits, none_logit, matrix


def rows_of(vectors: np.ndarray, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """``vectors[rows]`` without a copy when the rows are every row in order."""
    rows = np.asarray(rows)
    if len(rows) == len(vectors) and (len(rows) == 0 or (rows[0] == 0 and rows[-1] == len(rows) - 1)):
        return vectors
    out: np.ndarray = vectors[rows]
    return out
