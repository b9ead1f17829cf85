"""What to label next (suggest_labels), computed once a fit is live: pure selection functions and the refresh.

``uncertain``: pool items (the dataset's items not yet labelled for the tag) whose live-head probability is
nearest the tag's threshold, picked farthest-first within a band of the most uncertain, so that no two
suggestions of the dataset have cosine above ``max_cosine``. ``suspect``: explicit reports whose out-of-fold
probability contradicts the label (a positive scored low, a negative scored high), most confident first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.schemas.inference import ModelInfoReply
from trainer import repository
from trainer.embedder import ModelChanged
from trainer.fitresult import FitResult
from trainer.repository import ItemToEmbed
from trainer.selftraining import pool_probabilities

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SuggestConfig:
    """Knobs of the suggestions (``KASHF_SUGGEST_*`` in ``shared.settings.TrainerSettings``)."""

    max_cosine: float = 0.95  # no two suggestions of a dataset closer than this
    limit: int = 200  # suggestions kept per dataset (suspects take at most half)
    suspect_min: float = 0.75  # contradiction (p of the opposite label) from which a report is suspect
    band: int = 4  # the farthest-first pick looks at this many of each tag's most uncertain items per pick
    embed_per_refit: int = 2000  # pool items embedded after one fit, at most (the next fit goes on)


@dataclass(frozen=True)
class Pick:
    row: int  # in the candidate matrix (pool row for uncertain, reported row for suspect)
    column: int  # tag column
    probability: float
    reason: str  # uncertain | suspect


def unit(vectors: np.ndarray) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: np.ndarray = x / np.where(norms > 0, norms, 1.0)
    return out


def rank_suspects(probabilities: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order of the labels, most contradicted first, and each label's contradiction: the out-of-fold
    probability of the opposite label."""
    contradiction = np.where(positive, 1.0 - probabilities, probabilities)
    return np.argsort(-contradiction, kind="stable"), contradiction


def select_uncertain(vectors: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray, eligible: np.ndarray,
                     limit: int, max_cosine: float, band: int = 4,
                     taken: np.ndarray | None = None) -> list[Pick]:
    """Up to ``limit`` (row, tag column) picks, tags in turn. A tag's next pick is, among its ``band x picks
    left`` eligible rows nearest its threshold that are not above ``max_cosine`` of anything picked (or of
    ``taken``, unit vectors already suggested), the one farthest from everything picked: farthest-first."""
    n, k = probabilities.shape
    if n == 0 or k == 0 or limit <= 0:
        return []
    x = unit(vectors)
    orders = [_nearest_first(probabilities[:, j], thresholds[j], eligible[:, j]) for j in range(k)]
    nearest = np.full(n, -1.0, dtype=np.float32)  # highest cosine to anything picked
    if taken is not None and len(taken):
        nearest = np.max(x @ np.asarray(taken, dtype=np.float32).T, axis=1)
    used = np.zeros(n, dtype=bool)
    share = -(-limit // k)  # picks per tag, rounded up
    count = [0] * k
    picks: list[Pick] = []
    alive = [j for j in range(k) if len(orders[j])]
    while len(picks) < limit and alive:
        for j in list(alive):
            order = orders[j]
            ok = order[~used[order] & (nearest[order] <= max_cosine)]
            orders[j] = ok  # what is used or too close now stays so
            if ok.size == 0:
                alive.remove(j)
                continue
            candidates = ok[:max(1, band * max(1, share - count[j]))]
            # The very first pick is the most uncertain; then the farthest from what is picked.
            best = int(candidates[0] if nearest.max() < -0.5 else candidates[np.argmin(nearest[candidates])])
            picks.append(Pick(best, j, float(probabilities[best, j]), "uncertain"))
            count[j] += 1
            used[best] = True
            nearest = np.maximum(nearest, x @ x[best])
            if len(picks) >= limit:
                break
    return picks


def _nearest_first(probabilities: np.ndarray, threshold: float, eligible: np.ndarray) -> np.ndarray:
    """The eligible rows of one tag, nearest its threshold first (int32: a pool of 100k x 200 tags holds
    200 of them; the closeness is one column at a time, never a second (rows, tags) array)."""
    closeness = np.abs(probabilities - threshold)
    closeness[~eligible] = np.inf
    order = np.argsort(closeness, kind="stable")
    return order[np.isfinite(closeness[order])].astype(np.int32)


def select_suspects(vectors: np.ndarray, probabilities: np.ndarray, positive: np.ndarray, columns: np.ndarray,
                    limit: int, max_cosine: float, suspect_min: float) -> list[Pick]:
    """Up to ``limit`` labels (row i: an (item, tag) report with its out-of-fold probability) whose
    contradiction reaches ``suspect_min``, most confident first, none above ``max_cosine`` of another."""
    order, contradiction = rank_suspects(probabilities, positive)
    x = unit(vectors)
    chosen: list[int] = []
    picks: list[Pick] = []
    for i in order:
        if len(picks) >= limit or contradiction[i] < suspect_min:
            break
        if chosen and float(np.max(x[chosen] @ x[i])) > max_cosine:
            continue
        chosen.append(int(i))
        picks.append(Pick(int(i), int(columns[i]), float(probabilities[i]), "suspect"))
    return picks


def interleave(first: Sequence[Pick], second: Sequence[Pick]) -> list[Pick]:
    """One ranking: the two lists in turn, so both reasons show in a short answer."""
    out: list[Pick] = []
    for i in range(max(len(first), len(second))):
        out.extend(p[i] for p in (first, second) if i < len(p))
    return out


# The refresh after a fit


class Fitter(Protocol):
    """What the refresh needs of ``trainer.service.Trainer``."""

    sessions: async_sessionmaker[AsyncSession]
    chunks: dict[str, int]

    async def embed_and_store(self, kind: str, items: Sequence[ItemToEmbed],
                              model: ModelInfoReply) -> tuple[int, list[int]]: ...


async def refresh(trainer: Fitter, dataset_id: int, version: int, model: ModelInfoReply, result: FitResult,
                  item_ids: Sequence[int], config: SuggestConfig | None = None) -> int:
    """Replace the dataset's suggestions from head ``version`` if it is live; best effort (a failure is
    logged, the fit stands). ``item_ids``: the item of each row of the fit's matrix. Returns how many."""
    config = config or SuggestConfig()
    try:
        return await _refresh(trainer, dataset_id, version, model, result, item_ids, config)
    except Exception as exc:  # the head is committed: suggestions must never fail a refit
        log.warning("suggestions_failed", dataset_id=dataset_id, version=version, error=repr(exc))
        return 0


async def embed_pool(trainer: Fitter, dataset_id: int, model: ModelInfoReply, config: SuggestConfig) -> int:
    """Embed and store up to ``config.embed_per_refit`` of the newest kept inputs without a vector by ``model``
    (before a self-training fit and after each fit, for the suggestions); how many were stored."""
    async with trainer.sessions() as session:
        missing = await repository.pool_missing_embedding(session, dataset_id, model.model_id,
                                                          config.embed_per_refit)
    stored = 0
    for kind in trainer.chunks:
        try:
            embedded, failed = await trainer.embed_and_store(kind, [i for i in missing if i.kind == kind], model)
        except ModelChanged:
            return stored  # another model answered: its vectors are not this head's space
        stored += embedded
        if failed:
            # A kept input image whose URL no longer answers would be fetched again at every fit.
            async with trainer.sessions.begin() as session:
                await repository.drop_inputs(session, failed)
    return stored


async def _refresh(trainer: Fitter, dataset_id: int, version: int, model: ModelInfoReply, result: FitResult,
                   item_ids: Sequence[int], config: SuggestConfig) -> int:
    async with trainer.sessions() as session:
        if await repository.live_version(session, dataset_id) != version:
            return 0  # a held fit: suggestions stay those of the live head
    embedded = await embed_pool(trainer, dataset_id, model, config)
    async with trainer.sessions() as session:
        pool_ids, pool = await repository.pool_embeddings(session, dataset_id, model.model_id)
        tags = await repository.suggest_tags(session, dataset_id)
        reports = await repository.dataset_reports(session, dataset_id)
    head = result.head(model.model_id, version)
    columns = [j for j, t in enumerate(head.tag_ids.tolist()) if int(t) in tags and tags[int(t)][0]]
    labels = {(r.item_id, r.tag_id): r.positive for r in reports}
    suspects = _suspects(result, item_ids, pool_ids, pool, labels, head.tag_ids, columns, config)
    uncertain: list[Pick] = []
    if columns and len(pool_ids):
        tag_ids = head.tag_ids[columns]
        probs = pool_probabilities(head, pool, columns)
        thresholds = np.array([tags[int(t)][1] if tags[int(t)][1] is not None else float(head.thresholds[j])
                               for t, j in zip(tag_ids, columns, strict=True)])
        row_of = {int(i): r for r, i in enumerate(pool_ids)}
        col_of = {int(t): c for c, t in enumerate(tag_ids)}
        eligible = np.ones((len(pool_ids), len(columns)), dtype=bool)
        for (item, tag), positive in labels.items():
            if item in row_of:
                # Items reported positive for any tag are already every other tag's (implicit) negatives.
                if positive:
                    eligible[row_of[item]] = False
                elif tag in col_of:
                    eligible[row_of[item], col_of[tag]] = False
        taken = unit(pool[[row_of[s.row] for s in suspects]]) if suspects else None
        uncertain = [Pick(p.row, columns[p.column], p.probability, p.reason) for p in select_uncertain(
            pool, probs, thresholds, eligible, config.limit - len(suspects), config.max_cosine, config.band, taken)]
        uncertain = [Pick(int(pool_ids[p.row]), p.column, p.probability, p.reason) for p in uncertain]
    ranked = interleave(suspects, uncertain)
    rows = [{"dataset_id": dataset_id, "item_id": p.row, "tag_id": int(head.tag_ids[p.column]), "reason": p.reason,
             "probability": p.probability, "rank": rank, "version": version} for rank, p in enumerate(ranked)]
    async with trainer.sessions.begin() as session:
        if not await repository.replace_suggestions(session, dataset_id, version, rows):
            return 0
    log.info("suggestions_refreshed", dataset_id=dataset_id, version=version, uncertain=len(uncertain),
             suspect=len(suspects), pool=len(pool_ids), embedded=embedded)
    return len(rows)


def _suspects(result: FitResult, item_ids: Sequence[int], pool_ids: np.ndarray, pool: np.ndarray,
              labels: Mapping[tuple[int, int], bool], tag_ids: np.ndarray, columns: Sequence[int],
              config: SuggestConfig) -> list[Pick]:
    """Suspect reports as picks whose ``row`` is the item id."""
    column_of = {int(tag_ids[j]): j for j in columns}
    row_of = {int(i): r for r, i in enumerate(pool_ids)}
    items, probs, positive, cols = [], [], [], []
    for fit in result.tags:
        if fit.oof_rows is None or fit.oof_probabilities is None or fit.tag_id not in column_of:
            continue
        for row, p in zip(fit.oof_rows.tolist(), fit.oof_probabilities.tolist(), strict=True):
            item = int(item_ids[row])
            label = labels.get((item, fit.tag_id))
            if label is None or item not in row_of:
                continue
            items.append(item)
            probs.append(p)
            positive.append(label)
            cols.append(column_of[fit.tag_id])
    if not items:
        return []
    vectors = pool[[row_of[i] for i in items]]
    picks = select_suspects(vectors, np.array(probs), np.array(positive, dtype=bool), np.array(cols),
                            config.limit // 2, config.max_cosine, config.suspect_min)
    return [Pick(items[p.row], p.column, p.probability, p.reason) for p in picks]
