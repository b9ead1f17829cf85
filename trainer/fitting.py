"""Fitting a dataset's multi-label head on frozen embeddings: pure numpy and scikit-learn, no I/O.

Two scorers (``trainer.logistic`` per tag, ``trainer.ridge`` every tag at once), one finishing stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from trainer.finishing import finish, rows_of
from trainer.fitresult import FitConfig, FitResult, NothingToFit, Report, Scored, TagFit
from trainer.labels import ABSENT, POSITIVE, Labels, build_labels
from trainer.logistic import prototype, score_logistic
from trainer.ridge import score_ridge
from trainer.selftraining import applies as self_trains
from trainer.selftraining import merge, pseudo_labels

__all__ = ["FitConfig", "FitResult", "NothingToFit", "Report", "TagFit", "fit_head", "uses_ridge", "with_titles"]


def uses_ridge(rows: int, tags: int, config: FitConfig) -> bool:
    """Whether ``rows`` reported items and ``tags`` fitted tags go to the ridge path."""
    # The ridge path assumes one training set shared by the tags, up to a few rows: with implicit
    # negatives weighted like explicit ones.
    return (config.implicit_negatives and config.implicit_weight == 1.0 and rows >= config.ridge_min_rows
            and rows * tags >= config.ridge_min_cells)


def _score(vectors: np.ndarray, labels: Labels, columns: list[int], config: FitConfig) -> tuple[np.ndarray, Scored]:
    """The reported rows' embeddings and the scorer's stage one for ``columns``."""
    if uses_ridge(len(labels.rows), len(columns), config):
        x = rows_of(vectors, labels.rows)
        return x, score_ridge(x, labels, columns, config)
    x64 = np.asarray(vectors, dtype=np.float64)
    return x64[labels.rows], score_logistic(x64, labels, columns, config)


def with_titles(vectors: np.ndarray, reports: Sequence[Report], tag_ids: Sequence[int],
                titles: Mapping[int, np.ndarray], config: FitConfig) -> tuple[np.ndarray, list[Report]]:
    """The matrix and reports with each title of a listed tag that has a positive report as one more positive
    example of it (rows appended after ``vectors``'); unchanged when the switch is off or the dataset is large."""
    reports = list(reports)
    if not config.title_examples or not titles or len({r.row for r in reports}) >= config.title_max_rows:
        return vectors, reports
    positive = {r.tag_id for r in reports if r.positive}
    extra = [t for t in dict.fromkeys(tag_ids) if t in positive and t in titles]
    if not extra:
        return vectors, reports
    rows = np.stack([np.asarray(titles[t], dtype=vectors.dtype).reshape(-1) for t in extra])
    if rows.shape[1] != vectors.shape[1]:
        raise ValueError(f"title embeddings have {rows.shape[1]} dimensions, the items {vectors.shape[1]}")
    n = len(vectors)
    return np.vstack([vectors, rows]), reports + [Report(n + i, t, True) for i, t in enumerate(extra)]


def fit_head(vectors: np.ndarray, reports: Sequence[Report], tag_ids: Sequence[int],
             config: FitConfig | None = None, titles: Mapping[int, np.ndarray] | None = None,
             pool: np.ndarray | None = None) -> FitResult:
    """Fit every tag of ``tag_ids`` that has a positive report; CPU-bound, run it in a thread.

    ``titles``: tag id -> the embedding of the tag's title by the items' own model (text datasets only: an
    image model cannot embed a title), used as a pseudo-example with ``FitConfig.title_examples``.
    ``pool``: (m, dim) embeddings of the dataset's unlabelled items, for self-training (trainer.selftraining).
    """
    config = config or FitConfig()
    if not reports:
        raise NothingToFit("the dataset has no reports")
    vectors = np.asarray(vectors)
    with threadpool_limits(limits=config.blas_threads, user_api="blas"):
        result = _fit(vectors, reports, tag_ids, config, titles)
        if pool is None or not self_trains(result, len({r.row for r in reports}), len(pool), config):
            return result
        head = result.head("", 0)
        positives = np.array([t.positives for t in result.tags])
        rows, columns = pseudo_labels(head, np.asarray(pool), positives, config)
        if not len(rows):
            return result
        extra = (np.asarray(pool[rows], dtype=vectors.dtype), [int(head.tag_ids[c]) for c in columns])
        # Positive examples of one tag each, of tags already fitted: the second head has the same tags, exclusive.
        second = _fit(vectors, reports, tag_ids, config, titles, extra)
    return merge(result, second, len(rows))


def _fit(vectors: np.ndarray, reports: Sequence[Report], tag_ids: Sequence[int], config: FitConfig,
         titles: Mapping[int, np.ndarray] | None,
         pseudo: tuple[np.ndarray, list[int]] | None = None) -> FitResult:
    """``pseudo``: pool rows and the tag each is a positive example of, appended after the titles; like the
    titles, they never count in the figures."""
    real_rows, report_count = len(vectors), len(reports)
    vectors, reports = with_titles(vectors, reports, tag_ids, titles or {}, config)
    if pseudo is not None:
        n = len(vectors)
        vectors = np.vstack([vectors, pseudo[0]])
        reports = list(reports) + [Report(n + i, t, True) for i, t in enumerate(pseudo[1])]
    labels = build_labels(reports, tag_ids, config.implicit_negatives)
    positives = (labels.codes == POSITIVE).sum(axis=0)
    in_set = (labels.codes != ABSENT).sum(axis=0)
    prototypes: dict[int, TagFit] = {}
    columns: list[int] = []
    for j, tag_id in enumerate(labels.tag_ids):
        if positives[j] and positives[j] == in_set[j]:
            rows, _, _ = labels.column(j, config.implicit_weight)
            rows = rows[rows < real_rows]  # a lone tag's centroid and reach come from its reports alone
            prototypes[tag_id] = prototype(tag_id, np.asarray(vectors[rows], dtype=np.float64))
        elif positives[j]:
            columns.append(j)
    if not columns and not prototypes:
        raise NothingToFit("no tag has a positive report")
    # Implicit negatives already assume that a tag missing from an item's reports is absent from it;
    # when no item carries two tags, the head answers with at most one tag (or unknown) per item.
    exclusive = (config.exclusive == "auto" and not prototypes and len(columns) >= 2 and labels.multi_tag_rows == 0)
    fitted = dict(prototypes)
    none_logit, matrix = 0.0, None
    if columns:
        x, scored = _score(vectors, labels, columns, config)
        fits, none_logit, matrix = finish(x, labels, scored, exclusive, config, real_rows)
        fitted.update((fit.tag_id, fit) for fit in fits)
    # An exclusive head has no prototype: its tags are the scored columns, in order, as the matrix's.
    return FitResult(tags=[fitted[t] for t in labels.tag_ids if t in fitted], dim=vectors.shape[1],
                     report_count=report_count, skipped=[t for t in labels.tag_ids if t not in fitted],
                     exclusive=exclusive, none_logit=none_logit, matrix=matrix)
