"""The large-dataset path: ridge regression of every tag at once, cross-validated with one Gram matrix per fold."""

# Per tag, least squares on balanced targets (+n/2n_pos, -n/2n_neg) with an L2 penalty: its direction is
# Fisher's discriminant shrunk toward the embeddings' top directions, its intercept puts 0 halfway between
# the class means, so the pooled Platt map fits every tag as it does for logistic regression. Every tag
# sharing one training set (all of them, with implicit negatives) shares each fold's Gram matrix: one
# eigendecomposition per fold solves every tag for every penalty. Cost: O(n d^2 + n d k) per penalty, not
# per tag and C; bench/refit.py has the curve, the held-out comparison with the logistic path as well.

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from trainer.evaluation import average_precision
from trainer.fitresult import FitConfig, Scored
from trainer.labels import ABSENT, POSITIVE, Labels

_CHUNK = 8_192  # rows per block of the float64 sums: bounds the temporaries at 100k+ rows
_AP_TAGS = 32  # tags per block of the average-precision ranking
Solution = list[tuple[np.ndarray, np.ndarray]]  # per alpha: weights (d, k) and intercepts (k,)


@dataclass(frozen=True)
class _Sums:
    """Sums over some rows of the features: count, x, x x^T, and x and count over each tag's positives."""

    n: float
    s: np.ndarray  # (d,)
    gram: np.ndarray  # (d, d)
    pos_x: np.ndarray  # (d, k)
    pos_n: np.ndarray  # (k,)

    def __add__(self, other: _Sums) -> _Sums:
        return _Sums(self.n + other.n, self.s + other.s, self.gram + other.gram, self.pos_x + other.pos_x,
                     self.pos_n + other.pos_n)

    def __sub__(self, other: _Sums) -> _Sums:
        return _Sums(self.n - other.n, self.s - other.s, self.gram - other.gram, self.pos_x - other.pos_x,
                     self.pos_n - other.pos_n)

    def of(self, tags: np.ndarray) -> _Sums:
        return _Sums(self.n, self.s, self.gram, self.pos_x[:, tags], self.pos_n[tags])


def _blocks(rows: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(rows), _CHUNK):
        yield rows[start:start + _CHUNK]


def _sums(x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> _Sums:
    d, k = x.shape[1], y.shape[1]
    s, gram, pos_x = np.zeros(d), np.zeros((d, d)), np.zeros((d, k))
    for block in _blocks(rows):
        xb = x[block].astype(np.float64)
        s += xb.sum(axis=0)
        gram += xb.T @ xb
        pos_x += xb.T @ y[block]
    return _Sums(float(len(rows)), s, gram, pos_x, y[rows].sum(axis=0).astype(np.float64))


def _solve(train: _Sums, alphas: Sequence[float]) -> Solution:
    """(weights (d, k), intercepts (k,)) of every tag for each alpha, from one eigendecomposition."""
    n = max(train.n, 1.0)
    mean = train.s / n
    values, vectors = np.linalg.eigh(train.gram - n * np.outer(mean, mean))
    values = np.maximum(values, 0.0)
    neg_n = train.n - train.pos_n
    usable = (train.pos_n > 0) & (neg_n > 0)  # a fold may hold every positive of a rare tag
    a, b = n / (2 * np.maximum(train.pos_n, 1)), n / (2 * np.maximum(neg_n, 1))
    # X_c^T z for z = a on positives, -b on negatives: z sums to 0, so centring x changes nothing.
    rotated = vectors.T @ ((a + b) * train.pos_x - np.outer(train.s, b))
    midpoint = (train.pos_x / np.maximum(train.pos_n, 1) + (train.s[:, None] - train.pos_x) / np.maximum(neg_n, 1)) / 2
    scale = max(float(values.sum()) / len(values), 1e-12)
    out = []
    for alpha in alphas:
        w = vectors @ (rotated / (values + alpha * scale)[:, None])
        w[:, ~usable] = 0.0
        out.append((w, -np.einsum("dk,dk->k", w, midpoint)))
    return out


def _folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold per row, stratified by each row's first positive tag (dealt round-robin from a random start)."""
    n = len(y)
    rng = np.random.default_rng(seed)
    key = np.where(y.any(axis=1), y.argmax(axis=1), -1)
    order = np.lexsort((rng.random(n), key))
    starts = np.flatnonzero(np.r_[True, key[order][1:] != key[order][:-1]])
    sizes = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, sizes)
    fold = np.empty(n, dtype=np.int8)
    fold[order] = (rank + np.repeat(rng.integers(0, k, size=len(starts)), sizes)) % k
    return fold


def _fill(out: np.ndarray, x: np.ndarray, rows: np.ndarray, w: np.ndarray, bias: np.ndarray) -> None:
    """out[rows] = x[rows] @ w + bias, block by block, the product in float32 (scores only rank and calibrate)."""
    w32 = w.astype(np.float32)
    for block in _blocks(rows):
        out[block] = x[block] @ w32 + bias


def _choose(aps: np.ndarray, eligible: np.ndarray, config: FitConfig) -> np.ndarray:
    """Per tag, the index of the largest alpha within the tolerance of the best average precision."""
    alphas = np.asarray(config.ridge_alphas)
    default = int(np.argmin(np.abs(np.log(alphas / config.ridge_default_alpha))))
    good = aps >= aps.max(axis=0) - config.ridge_tolerance
    largest = len(alphas) - 1 - np.argmax(good[::-1], axis=0)
    return np.where(eligible, largest, default)


def _average_precisions(scores: np.ndarray, y: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Average precision of each column over ``rows``, a block of tags at a time (the ranking is (n, tags))."""
    out = np.empty(y.shape[1])
    for start in range(0, y.shape[1], _AP_TAGS):
        part = slice(start, start + _AP_TAGS)
        out[part] = average_precision(scores[rows, part], y[rows, part])
    return out


def _features(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """float32 features centred at the rows' mean, rescaled to unit RMS norm (as the logistic path's)."""
    n, d = x.shape
    mean = np.zeros(d)
    for block in _blocks(np.arange(n)):
        mean += x[block].astype(np.float64).sum(axis=0)
    mean /= n
    feats = np.empty((n, d), dtype=np.float32)
    for block in _blocks(np.arange(n)):
        feats[block] = x[block] - mean
    scale = float(np.sqrt(np.mean(np.einsum("nd,nd->n", feats, feats, dtype=np.float64)))) or 1.0
    feats /= np.float32(scale)
    return feats, mean, scale


def _group(feats: np.ndarray, y: np.ndarray, fold: np.ndarray, rows: np.ndarray, tests: Sequence[_Sums],
           eligible: np.ndarray, config: FitConfig, trial: np.ndarray) -> tuple[Solution, np.ndarray]:
    """Tags sharing the training set ``rows`` (``tests``: its sums per fold): out-of-fold scores written at
    ``rows`` of ``trial`` (n, k); returns the final solutions and the chosen alphas."""
    total = tests[0]
    for t in tests[1:]:
        total = total + t
    solutions = [_solve(total - t, config.ridge_alphas) for t in tests]
    chosen = _choose(np.zeros((1, y.shape[1])), eligible, config)
    if eligible.any():
        aps = []
        for a in range(len(config.ridge_alphas)):
            for f, solution in enumerate(solutions):
                _fill(trial, feats, rows[fold[rows] == f], *solution[a])
            aps.append(_average_precisions(trial, y, rows))
        chosen = _choose(np.array(aps), eligible, config)
    for f, solution in enumerate(solutions):
        w = np.stack([solution[a][0][:, i] for i, a in enumerate(chosen)], axis=1)
        b = np.array([solution[a][1][i] for i, a in enumerate(chosen)])
        _fill(trial, feats, rows[fold[rows] == f], w, b)
    return _solve(total, config.ridge_alphas), chosen


def score_ridge(x: np.ndarray, labels: Labels, columns: Sequence[int], config: FitConfig) -> Scored:
    """Every listed column at once; ``x``: the embeddings of ``labels.rows``, in that order."""
    codes = labels.codes[:, columns]
    y = (codes == POSITIVE).astype(np.float32)
    absent = codes == ABSENT
    n, k = codes.shape
    feats, mean, scale = _features(x)
    fold = _folds(y > 0, config.cv_folds, config.seed)
    n_pos = y.sum(axis=0)
    n_neg = (~absent).sum(axis=0) - n_pos
    has_oof = (n_pos >= 2) & (n_neg >= 2)
    eligible = np.minimum(n_pos, n_neg) >= config.grid_min_examples
    # float32 like the products that fill it (_fill): at 100k x 200 a float64 copy was 160 MB more.
    oof = np.full((n, k), np.nan, dtype=np.float32)
    folds = np.full((n, k), -1, dtype=np.int8)
    weights, bias, alphas = np.zeros((k, x.shape[1])), np.zeros(k), np.zeros(k)
    # Tags whose training sets are the same rows (every reported row, in the usual case) share the sums;
    # a set missing a few rows (items reported only as negatives of other tags) subtracts theirs.
    groups: dict[bytes, list[int]] = {}
    for j in range(k):
        groups.setdefault(np.flatnonzero(absent[:, j]).tobytes(), []).append(j)
    folds_range = range(config.cv_folds)
    every = [_sums(feats, y, np.flatnonzero(fold == f)) for f in folds_range]
    for members in groups.values():
        tags = np.array(members)
        rows, gone = np.flatnonzero(~absent[:, tags[0]]), np.flatnonzero(absent[:, tags[0]])
        if len(gone) < len(rows):
            tests = [every[f].of(tags) - _sums(feats, y[:, tags], gone[fold[gone] == f]) for f in folds_range]
        else:
            tests = [_sums(feats, y[:, tags], rows[fold[rows] == f]) for f in folds_range]
        cv = has_oof[tags]
        if len(tags) == k:  # one group of every tag (the usual case): scored in place, no (n, k) copies
            final, chosen = _group(feats, y, fold, rows, tests, eligible, config, oof)
            oof[:, ~cv] = np.nan
        else:
            trial = np.full((n, len(tags)), np.nan, dtype=np.float32)
            final, chosen = _group(feats, y[:, tags], fold, rows, tests, eligible[tags], config, trial)
            oof[np.ix_(rows, tags[cv])] = trial[np.ix_(rows, np.flatnonzero(cv))]
        folds[np.ix_(rows, tags[cv])] = fold[rows, None]
        for i, (col, a) in enumerate(zip(tags, chosen, strict=True)):
            w = final[a][0][:, i] / scale
            weights[col], bias[col], alphas[col] = w, final[a][1][i] - w @ mean, config.ridge_alphas[a]
    return Scored(columns=list(columns), weights=weights, bias=bias, c=alphas.tolist(), method="ridge", oof=oof,
                  folds=folds)
