"""Fitting and evaluating a dataset's multi-label head on frozen embeddings (no transport here).

Per tag, one-vs-rest logistic regression (implicit negatives: items positive for other tags) on centred, rescaled
embeddings; C by k-fold CV (average precision) once a tag has 10+ examples of each class; one Platt map fitted on
every tag's out-of-fold scores.

Exclusive heads (2+ tags, no item reported positive for two): an item gets its top tag unless every tag's logit is
under the head's "none" logit, so at most one tag; p = sigmoid(top logit - max(none, runner-up)), threshold 0.5.
The none logit maximises out-of-fold micro-F1 + top-1 accuracy (lowest such cut), shrunk toward ``none_prior`` by
``prior_weight`` pseudo-examples per tag: with 2 examples the top tag is nearly always returned, since a CV cut
on 2 examples is noise and every unknown answer costs accuracy; with 32 the out-of-fold cut dominates.
Other heads (multi-label): independent sigmoids, per-tag F1-maximising threshold on out-of-fold probabilities.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import structlog
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelkit.heads import Head, exclusive_probabilities
from shared.errors import Unavailable
from trainer import repository
from trainer.repository import ItemToEmbed

log = structlog.get_logger(__name__)


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


NULL_FIGURES: dict[str, Any] = {"recall": None, "precision": None, "f1": None}


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
        counts = [t.counts for t in self.tags if t.counts is not None and (active is None or t.tag_id in active)]
        if not counts:
            return dict(NULL_FIGURES)
        total = Counts()
        for c in counts:
            total = total + c
        return total.figures()


class NothingToFit(ValueError):
    """No tag of the dataset has a positive report."""


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))
    return out


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


def _oof_scores(x: np.ndarray, y: np.ndarray, w: np.ndarray, c: float, folds: list[tuple[np.ndarray, np.ndarray]],
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


def _counts(pred: np.ndarray, y: np.ndarray) -> Counts:
    positives = y == 1
    return Counts(
        tp=int(np.sum(pred & positives)),
        fp=int(np.sum(pred & ~positives)),
        fn=int(np.sum(~pred & positives)),
        tn=int(np.sum(~pred & ~positives)),
    )


def _cross_fitted_counts(probs: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]) -> Counts:
    # Each fold is judged with the threshold the other folds chose, so the figures do not
    # profit from picking the threshold on the very examples they count.
    total = Counts()
    for train, test in folds:
        threshold = best_threshold(probs[train], y[train])
        total = total + _counts(probs[test] >= threshold, y[test])
    return total


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
    folds: list[tuple[np.ndarray, np.ndarray]]


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
        counts = _counts(probs >= threshold, scored.y)
    elif probs is not None:
        threshold = best_threshold(probs, scored.y)
        counts = _cross_fitted_counts(probs, scored.y, scored.folds)
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


def _none_logit(logits: np.ndarray, truth: np.ndarray) -> float:
    """The lowest "none" logit maximising micro-F1 + top-1 accuracy of the top-tag-or-unknown answers.

    ``truth`` is (rows, tags) boolean; a row with no true tag is answered right by unknown.
    """
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
    # Ties go to the lowest cut: an unknown answer costs top-1 accuracy whenever the top tag was right.
    return float(candidates[np.flatnonzero(np.isclose(values, values.max()))[0]])


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
        none_logit = (per_tag * _none_logit(logits[reported], truth) + m * config.none_prior) / (per_tag + m)
    probs = exclusive_probabilities(logits, none_logit) if exclusive else _sigmoid(logits)
    fitted = dict(prototypes)
    for j, s in enumerate(scored):
        fitted[s.tag_id] = _finish(s, calibrations[j], probs[s.rows, j] if s.scores is not None else None,
                                   exclusive)
    return FitResult(tags=[fitted[t] for t in tag_ids if t in fitted], dim=x.shape[1], report_count=len(reports),
                     skipped=skipped, exclusive=exclusive, none_logit=none_logit)


# --- one dataset's refit: read reports, embed what lacks an embedding, fit, commit -------------------


class Embedder(Protocol):
    """Embeds items with the model currently served for their kind (the bus in production)."""

    async def model_id(self, kind: str) -> str: ...

    async def embed(self, kind: str, items: Sequence[ItemToEmbed]) -> tuple[str, list[np.ndarray | None]]:
        """The model id and one vector per item, None for an item that could not be embedded."""
        ...


HeadStore = Callable[[int, Head], Awaitable[str]]
# Told the dataset id once a new head version is committed (gateways then drop what they cached of it).
HeadNotify = Callable[[int], Awaitable[None]]


class Unsupported(ValueError):
    """The dataset cannot be trained as it stands (no reports, no positives, unknown kind)."""


@dataclass(frozen=True)
class RefitOutcome:
    dataset_id: int
    state: str  # trained | failed | missing
    version: int | None = None
    reason: str | None = None
    embedded: int = 0
    result: FitResult | None = None


class Trainer:
    """Refits one dataset at a time; safe to repeat (a redelivered event just refits)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], embedder: Embedder, store_head: HeadStore,
                 *, config: FitConfig | None = None, text_chunk: int = 32, image_chunk: int = 8,
                 on_new_head: HeadNotify | None = None) -> None:
        self.sessions = sessions
        self.embedder = embedder
        self.store_head = store_head
        self.on_new_head = on_new_head
        self.config = config or FitConfig()
        self.chunks = {"text": text_chunk, "image": image_chunk}

    async def refit(self, dataset_id: int) -> RefitOutcome:
        async with self.sessions.begin() as session:
            dataset = await repository.get_dataset(session, dataset_id)
            if dataset is None:
                return RefitOutcome(dataset_id, "missing", reason="dataset does not exist")
            await repository.set_state(session, dataset_id, "training")
            reports = await repository.dataset_reports(session, dataset_id)
            tags = await repository.dataset_tags(session, dataset_id)
            kind = dataset.kind
        try:
            if not reports:
                raise Unsupported("the dataset has no reports yet")
            kind = kind or reports[0].kind
            if kind not in self.chunks:
                raise Unsupported(f"datasets of kind {kind!r} cannot be trained")
            model_id = await self.embedder.model_id(kind)
            embedded = await self._embed_missing(dataset_id, kind, model_id)
            async with self.sessions() as session:
                vectors = await repository.load_embeddings(session, {r.item_id for r in reports}, model_id)
            result = await asyncio.to_thread(self._fit, reports, tags, vectors)
        except (Unsupported, NothingToFit) as exc:
            await self.mark(dataset_id, "failed", str(exc))
            return RefitOutcome(dataset_id, "failed", reason=str(exc))
        version = await self._commit(dataset_id, model_id, tags, result)
        if self.on_new_head is not None:
            await self.on_new_head(dataset_id)
        log.info("dataset_trained", dataset_id=dataset_id, version=version, model_id=model_id,
                 reports=result.report_count, tags=len(result.tags), embedded=embedded)
        return RefitOutcome(dataset_id, "trained", version=version, embedded=embedded, result=result)

    async def mark(self, dataset_id: int, state: str, reason: str | None) -> None:
        async with self.sessions.begin() as session:
            await repository.set_state(session, dataset_id, state, reason)

    async def _embed_missing(self, dataset_id: int, kind: str, model_id: str) -> int:
        async with self.sessions() as session:
            missing = await repository.items_missing_embedding(session, dataset_id, model_id)
        missing = [item for item in missing if item.kind == kind]
        chunk = self.chunks[kind]
        stored = 0
        for start in range(0, len(missing), chunk):
            part = missing[start:start + chunk]
            got_model, vectors = await self.embedder.embed(kind, part)
            if got_model != model_id:
                # The served model changed mid-refit: start over so every vector comes from one model.
                raise Unavailable(f"the {kind} model changed during training")
            done = [(item.id, v) for item, v in zip(part, vectors, strict=True) if v is not None]
            if not done:
                continue
            # Each chunk commits on its own, so a crash mid-refit keeps the work already paid for.
            async with self.sessions.begin() as session:
                await repository.store_embeddings(session, model_id, [i for i, _ in done],
                                                  np.stack([v for _, v in done]))
            stored += len(done)
        return stored

    def _fit(self, reports: Sequence[repository.ReportRow], tags: Sequence[repository.TagRow],
             vectors: Mapping[int, np.ndarray]) -> FitResult:
        rows = {item_id: row for row, item_id in enumerate(sorted(vectors))}
        usable = [Report(rows[r.item_id], r.tag_id, r.positive) for r in reports if r.item_id in rows]
        if not rows or not usable:
            raise Unsupported("no reported item could be embedded")
        matrix = np.stack([vectors[item_id] for item_id in sorted(vectors)])
        return fit_head(matrix, usable, [t.id for t in tags], self.config)

    async def _commit(self, dataset_id: int, model_id: str, tags: Sequence[repository.TagRow],
                      result: FitResult) -> int:
        active = {t.id for t in tags if t.active}
        fitted = {t.tag_id: t for t in result.tags}
        tag_updates: dict[int, tuple[float | None, Mapping[str, Any]]] = {
            t.id: ((float(fitted[t.id].threshold), fitted[t.id].evaluation) if t.id in fitted
                   else (None, dict(NULL_FIGURES)))
            for t in tags
        }
        async with self.sessions.begin() as session:
            # The row lock serialises replicas refitting one dataset, so versions never collide.
            dataset = await repository.get_dataset(session, dataset_id, lock=True)
            if dataset is None:
                raise Unsupported("dataset deleted during training")
            version = (dataset.head_version or 0) + 1
            name = await self.store_head(dataset_id, result.head(model_id, version))
            await repository.save_fit(
                session, dataset_id=dataset_id, version=version, model_id=model_id, object_name=name,
                report_count=result.report_count, evaluation=result.dataset_evaluation(active), tags=tag_updates,
            )
        return version
