"""Judging a fit on out-of-fold probabilities: counts, figures and the thresholds that decide a tag.

Pure numpy: what the dataset_info figures mean (precision, recall, F1 in percent) and how each cut is chosen.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

Folds = list[tuple[np.ndarray, np.ndarray]]

NULL_FIGURES: dict[str, Any] = {"recall": None, "precision": None, "f1": None}


@dataclass(frozen=True)
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    def figures(self) -> dict[str, float]:
        """Precision, recall and F1 in percent with one decimal (0 when undefined)."""
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"recall": round(100 * recall, 1), "precision": round(100 * precision, 1), "f1": round(100 * f1, 1)}


def micro_average(counts: Iterable[Counts | None]) -> dict[str, Any]:
    """Figures of the summed counts; null figures when no tag could be evaluated (all None)."""
    present = [c for c in counts if c is not None]
    if not present:
        return dict(NULL_FIGURES)
    total = Counts()
    for c in present:
        total = total + c
    return total.figures()


def count(pred: np.ndarray, y: np.ndarray) -> Counts:
    """Confusion counts of boolean predictions against 0/1 labels."""
    positives = y == 1
    return Counts(
        tp=int(np.sum(pred & positives)),
        fp=int(np.sum(pred & ~positives)),
        fn=int(np.sum(~pred & positives)),
        tn=int(np.sum(~pred & ~positives)),
    )


def best_threshold(probs: np.ndarray, y: np.ndarray) -> float:
    """The F1-maximising cut on ``probs``: the median of the tied best midpoints between sorted values."""
    values = np.unique(probs)
    candidates = np.concatenate([[values[0] / 2], (values[:-1] + values[1:]) / 2]) if len(values) else np.array([0.5])
    ordered = np.sort(probs)
    positives = np.sort(probs[y == 1])
    # Items at or above each candidate, all and positive ones, by binary search (pooled sets are large).
    predicted = len(ordered) - np.searchsorted(ordered, candidates, side="left")
    tp = len(positives) - np.searchsorted(positives, candidates, side="left")
    denominator = predicted + len(positives)
    f1 = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    tied = candidates[np.isclose(f1, f1.max())]
    return float(np.median(tied))


def cross_fitted_counts(probs: np.ndarray, y: np.ndarray, folds: Folds) -> Counts:
    """Counts of each fold judged with the threshold the other folds chose.

    So the figures do not profit from picking the threshold on the very examples they count.
    """
    total = Counts()
    for train, test in folds:
        threshold = best_threshold(probs[train], y[train])
        total = total + count(probs[test] >= threshold, y[test])
    return total


def exclusive_confusion(probs: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The (k + 1, k + 1) counts of an exclusive head's answers against the true tags.

    ``probs`` (rows, k): the head's probabilities; ``truth`` (rows, k) bool, at most one true tag per row.
    Row i counts the items whose true tag is column i (row k: items with no true tag, reported negative only),
    column j the items answered with tag j (column k: unknown). An item is answered with its top tag when that
    tag's probability reaches 0.5 (only the top tag of an exclusive head can), else unknown.
    """
    rows, k = probs.shape
    truth = np.asarray(truth, dtype=bool)
    if truth.shape != probs.shape:
        raise ValueError(f"truth has shape {truth.shape}, probs {probs.shape}")
    if rows and int(truth.sum(axis=1).max()) > 1:
        raise ValueError("an item of an exclusive head has at most one true tag")
    actual = np.where(truth.any(axis=1), truth.argmax(axis=1), k)
    answered = np.full(rows, k)
    if k:
        top = probs.argmax(axis=1)
        answered = np.where(probs[np.arange(rows), top] >= 0.5, top, k)
    cells = np.bincount(actual * (k + 1) + answered, minlength=(k + 1) ** 2)
    return cells.reshape(k + 1, k + 1).astype(np.int64)


def best_none_logit(logits: np.ndarray, truth: np.ndarray) -> float:
    """The lowest "none" logit maximising micro-F1 + top-1 accuracy of the top-tag-or-unknown answers.

    ``logits`` and ``truth`` are (rows, tags); a row with no true tag is answered right by unknown.
    """
    top, best = logits.argmax(axis=1), logits.max(axis=1)
    hit = truth[np.arange(len(truth)), top]
    positives = int(truth.sum())
    candidates = np.concatenate([[best.min() - 1e-6], np.unique(best) + 1e-6])
    # Per cut: rows answered, rows answered right (hit), rows below it with no true tag (right to be
    # unknown), by binary search over sorted logits, so linear in rows rather than quadratic.
    answered = len(best) - np.searchsorted(np.sort(best), candidates, side="left")
    tp = int(hit.sum()) - np.searchsorted(np.sort(best[hit]), candidates, side="left")
    unknown_right = np.searchsorted(np.sort(best[~truth.any(axis=1)]), candidates, side="left")
    denominator = answered + positives
    f1 = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    values = f1 + (tp + unknown_right) / len(best)
    # Ties go to the lowest cut: an unknown answer costs top-1 accuracy whenever the top tag was right.
    return float(candidates[np.flatnonzero(np.isclose(values, values.max()))[0]])


def average_precision(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Average precision of each column of ``scores`` (n, k) against 0/1 ``y`` (n, k), ties as scikit-learn.

    The mean over positives of the precision among the items scoring at least as high (0 without positives).
    """
    columns = np.ascontiguousarray(scores.T)
    truth = np.asarray(y, dtype=bool).T
    ordered = np.sort(columns, axis=1)  # one sort per column; the positives are then binary searches
    out = np.zeros(len(columns))
    for j, column in enumerate(columns):
        positives = column[truth[j]]
        if len(positives):
            above = len(column) - np.searchsorted(ordered[j], positives, side="left")
            above_positive = len(positives) - np.searchsorted(np.sort(positives), positives, side="left")
            out[j] = float(np.mean(above_positive / above))
    return out
