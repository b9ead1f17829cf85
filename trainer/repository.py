"""SQL of the trainer. Functions take a session and never commit: the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy import (
    BigInteger,
    Integer,
    and_,
    cast,
    column,
    delete,
    func,
    literal,
    or_,
    select,
    table,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import DataItem, Dataset, Embedding, HeadVersion, Report, Suggestion, Tag


@dataclass(frozen=True)
class ReportRow:
    item_id: int
    tag_id: int
    positive: bool
    kind: str


@dataclass(frozen=True)
class ItemToEmbed:
    """What an item needs to be (re-)embedded: its text, or its kept image bytes or URL."""

    id: int
    kind: str
    content: str | None
    media: bytes | None
    media_type: str | None
    source_url: str | None


@dataclass(frozen=True)
class TagRow:
    id: int
    title: str
    active: bool


@dataclass(frozen=True)
class LiveHead:
    """The dataset's current head: its version, where its blob is, and what it was fitted from."""

    version: int
    object_name: str
    fingerprint: str | None


@dataclass(frozen=True)
class VersionFigures:
    """What the promotion gate needs of a stored version: its model and cross-validated figures."""

    version: int
    model_id: str
    macro_f1: float | None
    tags: Mapping[str, Any] | None  # str(tag id) -> {"threshold", "evaluation"}


# Advisory lock keys: a dataset's refit locks its (positive) id; the stall sweep this negative key.
SWEEP_LOCK = -1
_LOCKS = table("pg_locks", column("locktype"), column("classid"), column("objid"), column("objsubid"))


async def try_lock(session: AsyncSession, key: int) -> bool:
    """Take a transaction-scoped advisory lock unless another session holds it: it is released when the
    session's transaction ends or its connection drops (a crashed trainer holds nothing)."""
    return bool(await session.scalar(select(func.pg_try_advisory_xact_lock(key))))


async def get_dataset(session: AsyncSession, dataset_id: int, *, lock: bool = False) -> Dataset | None:
    query = select(Dataset).where(Dataset.id == dataset_id)
    if lock:
        # FOR NO KEY UPDATE: reports and items keep being inserted meanwhile (their foreign key check
        # takes a key-share lock, which FOR UPDATE would block for the whole head upload).
        query = query.with_for_update(key_share=True)
    return (await session.execute(query)).scalar_one_or_none()


async def dataset_account(session: AsyncSession, dataset_id: int) -> int | None:
    return await session.scalar(select(Dataset.account_id).where(Dataset.id == dataset_id))


async def live_head(session: AsyncSession, dataset: Dataset) -> LiveHead | None:
    if dataset.head_version is None:
        return None
    row = (await session.execute(
        select(HeadVersion.object_name, HeadVersion.fingerprint)
        .where(HeadVersion.dataset_id == dataset.id, HeadVersion.version == dataset.head_version)
    )).one_or_none()
    return None if row is None else LiveHead(dataset.head_version, row.object_name, row.fingerprint)


async def keep_head(session: AsyncSession, dataset_id: int, version: int, reason: str | None = None) -> bool:
    """The dataset is trained by its current head (still ``version``); False if another head replaced it."""
    kept = await session.scalar(
        update(Dataset).where(Dataset.id == dataset_id, Dataset.head_version == version)
        .values(state="trained", state_reason=reason).returning(Dataset.id)
    )
    return kept is not None


async def newest_held(session: AsyncSession, dataset: Dataset) -> LiveHead | None:
    """The newest version above the live one when it is held (the last fit lost the promotion gate)."""
    row = (await session.execute(
        select(HeadVersion.version, HeadVersion.object_name, HeadVersion.fingerprint, HeadVersion.held)
        .where(HeadVersion.dataset_id == dataset.id, HeadVersion.version > (dataset.head_version or 0))
        .order_by(HeadVersion.version.desc()).limit(1)
    )).one_or_none()
    return None if row is None or not row.held else LiveHead(row.version, row.object_name, row.fingerprint)


async def version_figures(session: AsyncSession, dataset_id: int, version: int | None) -> VersionFigures | None:
    if version is None:
        return None
    row = (await session.execute(
        select(HeadVersion.model_id, HeadVersion.macro_f1, HeadVersion.tags)
        .where(HeadVersion.dataset_id == dataset_id, HeadVersion.version == version)
    )).one_or_none()
    return None if row is None else VersionFigures(version, row.model_id, row.macro_f1, row.tags)


async def newest_version(session: AsyncSession, dataset_id: int) -> int:
    """The highest version number the dataset ever stored and still has (0 when none): held fits sit above
    the live one, so a new version is numbered from this, not from the live one."""
    newest = await session.scalar(select(func.max(HeadVersion.version)).where(HeadVersion.dataset_id == dataset_id))
    return int(newest or 0)


async def doomed_versions(session: AsyncSession, dataset_id: int, live: int | None, keep: int) -> list[tuple[int, str]]:
    """(version, object name) of the versions retention deletes: all but the live one, the held ones newer
    than it, and the ``keep`` newest of the rest. Call with the dataset row locked (no use_version meanwhile)."""
    rows = (await session.execute(
        select(HeadVersion.version, HeadVersion.object_name, HeadVersion.held)
        .where(HeadVersion.dataset_id == dataset_id).order_by(HeadVersion.version.desc())
    )).all()
    others = [r for r in rows if r.version != live and not (r.held and live is not None and r.version > live)]
    return [(r.version, r.object_name) for r in others[keep:]]


async def delete_versions(session: AsyncSession, dataset_id: int, versions: Sequence[int]) -> None:
    if versions:
        await session.execute(
            delete(HeadVersion).where(HeadVersion.dataset_id == dataset_id, HeadVersion.version.in_(versions)))


def _refitting() -> Any:
    """Some session holds the dataset's refit lock (a bigint key shows as classid, objid, objsubid 1)."""
    key = cast(_LOCKS.c.classid, BigInteger).op("<<")(literal(32, Integer)).op("|")(cast(_LOCKS.c.objid, BigInteger))
    return select(_LOCKS.c.locktype).where(
        _LOCKS.c.locktype == "advisory", _LOCKS.c.objsubid == 1, key == Dataset.id).exists()


async def stalled_datasets(session: AsyncSession, older_than_s: float, limit: int = 1000) -> list[int]:
    """Datasets ``waiting`` since longer than ``older_than_s`` (or with no request time recorded), and
    datasets left ``training`` that no trainer refits (one crashed and its events ran out of deliveries)."""
    since = func.now() - timedelta(seconds=older_than_s)
    waiting = and_(Dataset.state == "waiting",
                   or_(Dataset.train_requested_at.is_(None), Dataset.train_requested_at < since))
    orphaned = and_(Dataset.state == "training", ~_refitting())
    rows = await session.scalars(select(Dataset.id).where(or_(waiting, orphaned)).order_by(Dataset.id).limit(limit))
    return list(rows)


async def dataset_tags(session: AsyncSession, dataset_id: int) -> list[TagRow]:
    rows = await session.execute(
        select(Tag.id, Tag.title, Tag.active).where(Tag.dataset_id == dataset_id).order_by(Tag.id)
    )
    return [TagRow(id=r.id, title=r.title, active=r.active) for r in rows]


REPORT_PAGE = 5000  # rows per read of a dataset's reports


async def dataset_reports(session: AsyncSession, dataset_id: int, page: int = REPORT_PAGE) -> list[ReportRow]:
    """Every report of the dataset with its item's kind, ordered by (item, tag): read in pages of ``page`` rows,
    keyset on that pair (``ix_report_dataset_item``), so no statement returns or reads more than one page."""
    # The kind as a subquery, not a join: a join let the planner hash or merge whole tables for each page.
    kind = select(DataItem.kind).where(DataItem.id == Report.item_id).scalar_subquery().label("kind")
    out: list[ReportRow] = []
    item, tag = 0, 0
    while True:
        rows = (await session.execute(
            select(Report.item_id, Report.tag_id, Report.positive, kind)
            .where(Report.dataset_id == dataset_id,
                   tuple_(Report.item_id, Report.tag_id) > tuple_(literal(item, BigInteger), literal(tag, BigInteger)))
            .order_by(Report.item_id, Report.tag_id).limit(page)
        )).all()
        out.extend(ReportRow(item_id=r.item_id, tag_id=r.tag_id, positive=r.positive, kind=r.kind) for r in rows)
        if len(rows) < page:
            return out
        item, tag = int(rows[-1].item_id), int(rows[-1].tag_id)


def _reported() -> Any:
    return select(Report.id).where(Report.item_id == DataItem.id).exists()


def _embedded(model_id: str) -> Any:
    """The item has a vector by ``model_id``: an anti-join on the embedding's key when negated. ``NOT IN
    (every item id with a vector by the model)`` scanned the whole table for each item once that list outgrew
    work_mem: a refit of 100k reports sat in it for over 11 minutes (python -m bench.scale)."""
    return select(Embedding.item_id).where(Embedding.item_id == DataItem.id, Embedding.model_id == model_id).exists()


async def items_missing_embedding(session: AsyncSession, dataset_id: int, model_id: str) -> list[ItemToEmbed]:
    """Reported items of the dataset that have no embedding by ``model_id``."""
    rows = await session.execute(
        select(DataItem.id, DataItem.kind, DataItem.content, DataItem.media, DataItem.media_type,
               DataItem.source_url)
        .where(DataItem.dataset_id == dataset_id, _reported(), ~_embedded(model_id))
        .order_by(DataItem.id)
    )
    return [ItemToEmbed(id=r.id, kind=r.kind, content=r.content, media=r.media, media_type=r.media_type,
                        source_url=r.source_url) for r in rows]


async def store_embeddings(session: AsyncSession, model_id: str, item_ids: Sequence[int], vectors: np.ndarray) -> None:
    """Insert one row per item; an embedding stored by an earlier (crashed) attempt is kept."""
    if not item_ids:
        return
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    values = [
        {"item_id": item_id, "model_id": model_id, "dim": int(matrix.shape[1]), "vector": matrix[i].tobytes()}
        for i, item_id in enumerate(item_ids)
    ]
    await session.execute(insert(Embedding).values(values).on_conflict_do_nothing())


EMBEDDING_PAGE = 5000  # rows per read of stored vectors (384 float32 each: about 8 MB a page)


async def reported_embeddings(session: AsyncSession, dataset_id: int, model_id: str,
                              page: int = EMBEDDING_PAGE) -> tuple[np.ndarray, np.ndarray]:
    """Ids (ascending) and (n, dim) float32 embeddings by ``model_id`` of the dataset's reported items."""
    return await _embeddings(session, dataset_id, model_id, page, reported_only=True)


async def _embeddings(session: AsyncSession, dataset_id: int, model_id: str, page: int,
                      *, reported_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read in pages of ``page`` rows, keyset on the item id (``ix_data_item_dataset_newest``): each statement
    returns at most one page, so neither the server nor this process ever holds the whole result as rows.
    Each page is copied into one matrix grown by a page at a time (``ndarray.resize``: a realloc, which moves a
    large block by remapping it): pages kept for one final concatenation held the matrix twice (100k x 384:
    a peak 313 MiB above the process before the read, now 175 MiB)."""
    ids: list[np.ndarray] = []
    matrix = np.zeros((0, 0), dtype=np.float32)
    n = after = 0
    while True:
        query = (select(DataItem.id, Embedding.dim, Embedding.vector)
                 .join(Embedding, and_(Embedding.item_id == DataItem.id, Embedding.model_id == model_id))
                 .where(DataItem.dataset_id == dataset_id, DataItem.id > after)
                 .order_by(DataItem.id).limit(page))
        if reported_only:
            query = query.where(_reported())
        rows = (await session.execute(query)).all()
        if rows:
            ids.append(np.fromiter((r.id for r in rows), dtype=np.int64, count=len(rows)))
            matrix.resize((n + len(rows), rows[0].dim), refcheck=False)
            matrix[n:n + len(rows)] = np.frombuffer(b"".join(r.vector for r in rows), dtype=np.float32
                                                    ).reshape(len(rows), rows[0].dim)
            n += len(rows)
            after = int(rows[-1].id)
        if len(rows) < page:
            break
    if not n:
        return np.zeros(0, dtype=np.int64), matrix
    return np.concatenate(ids), matrix


async def set_state(session: AsyncSession, dataset_id: int, state: str, reason: str | None = None) -> None:
    await session.execute(
        update(Dataset).where(Dataset.id == dataset_id).values(state=state, state_reason=reason)
    )


async def save_fit(
    session: AsyncSession,
    *,
    dataset_id: int,
    version: int,
    model_id: str,
    object_name: str,
    report_count: int,
    fingerprint: str,
    evaluation: Mapping[str, Any],
    tags: Mapping[int, tuple[float | None, Mapping[str, Any]]],
    macro_f1: float | None = None,
    held_reason: str | None = None,
    confusion: Mapping[str, Any] | None = None,
    mode: str = "trained",
    pseudo_labels: int = 0,
) -> None:
    """Record a new head: its version row (with its figures and confusion counts, kept for use_version) and,
    unless it is held (``held_reason``), the dataset's head, state and figures and each tag's threshold and
    figures."""
    session.add(HeadVersion(
        dataset_id=dataset_id, version=version, model_id=model_id, object_name=object_name,
        report_count=report_count, fingerprint=fingerprint, held=held_reason is not None,
        evaluation=dict(evaluation), macro_f1=macro_f1, confusion=None if confusion is None else dict(confusion),
        mode=mode, pseudo_labels=pseudo_labels,
        tags={str(tag_id): {"threshold": threshold, "evaluation": dict(figures)}
              for tag_id, (threshold, figures) in tags.items()},
    ))
    if held_reason is not None:
        # The live head keeps answering; the dataset is trained (by it) and says why the fit waits.
        await session.execute(
            update(Dataset).where(Dataset.id == dataset_id).values(state="trained", state_reason=held_reason))
        await session.flush()
        return
    await session.execute(
        update(Dataset).where(Dataset.id == dataset_id).values(
            state="trained", state_reason=None, head_version=version, evaluation=dict(evaluation),
            model_id=model_id, trained_at=func.now(),
        )
    )
    for tag_id, (threshold, figures) in tags.items():
        await session.execute(
            update(Tag).where(Tag.id == tag_id, Tag.dataset_id == dataset_id)
            .values(threshold=threshold, evaluation=dict(figures))
        )
    await session.flush()


# Suggestions (trainer.suggestions): the pool, each tag's threshold in force, the dataset's suggestion rows.


async def live_version(session: AsyncSession, dataset_id: int) -> int | None:
    return await session.scalar(select(Dataset.head_version).where(Dataset.id == dataset_id))


async def pool_missing_embedding(session: AsyncSession, dataset_id: int, model_id: str,
                                 limit: int) -> list[ItemToEmbed]:
    """Kept inputs of the dataset without an embedding by ``model_id``, newest first. Reported items are the
    refit's to embed: one it could not embed (an unreadable image) is not sent to the model again here."""
    rows = await session.execute(
        select(DataItem.id, DataItem.kind, DataItem.content, DataItem.media, DataItem.media_type,
               DataItem.source_url)
        .where(DataItem.dataset_id == dataset_id, DataItem.origin == "input", ~_embedded(model_id))
        .order_by(DataItem.id.desc()).limit(limit)
    )
    return [ItemToEmbed(id=r.id, kind=r.kind, content=r.content, media=r.media, media_type=r.media_type,
                        source_url=r.source_url) for r in rows]


async def pool_embeddings(session: AsyncSession, dataset_id: int, model_id: str,
                          page: int = EMBEDDING_PAGE) -> tuple[np.ndarray, np.ndarray]:
    """Ids (ascending) and (n, dim) float32 embeddings by ``model_id`` of every item of the dataset."""
    return await _embeddings(session, dataset_id, model_id, page, reported_only=False)


async def pool_state(session: AsyncSession, dataset_id: int) -> tuple[int, int]:
    """(how many, the newest id) of the dataset's unlabelled items (no report): what self-training reads."""
    row = (await session.execute(
        select(func.count(DataItem.id), func.coalesce(func.max(DataItem.id), 0))
        .where(DataItem.dataset_id == dataset_id, ~_reported()))).one()
    return int(row[0]), int(row[1])


async def unlabelled_embeddings(session: AsyncSession, dataset_id: int, model_id: str,
                                limit: int) -> np.ndarray:
    """(n, dim) float32 embeddings by ``model_id`` of the dataset's newest ``limit`` items with no report."""
    rows = (await session.execute(
        select(Embedding.dim, Embedding.vector)
        .join(DataItem, and_(Embedding.item_id == DataItem.id, Embedding.model_id == model_id))
        .where(DataItem.dataset_id == dataset_id, ~_reported())
        .order_by(DataItem.id.desc()).limit(limit))).all()
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return np.frombuffer(b"".join(r.vector for r in rows), dtype=np.float32).reshape(len(rows), rows[0].dim)


async def suggest_tags(session: AsyncSession, dataset_id: int) -> dict[int, tuple[bool, float | None]]:
    """Per tag: whether it is active, and its threshold override (None: the head's own)."""
    rows = await session.execute(
        select(Tag.id, Tag.active, Tag.threshold_override).where(Tag.dataset_id == dataset_id)
    )
    return {r.id: (bool(r.active), r.threshold_override) for r in rows}


async def replace_suggestions(session: AsyncSession, dataset_id: int, version: int,
                              rows: Sequence[Mapping[str, Any]]) -> bool:
    """The dataset's suggestions become ``rows``, if ``version`` is still its live head (False otherwise)."""
    live = await session.scalar(
        select(Dataset.head_version).where(Dataset.id == dataset_id).with_for_update(key_share=True))
    if live != version:
        return False
    await session.execute(delete(Suggestion).where(Suggestion.dataset_id == dataset_id))
    if rows:
        await session.execute(insert(Suggestion).values([dict(r) for r in rows]))
    return True


async def drop_inputs(session: AsyncSession, item_ids: Sequence[int]) -> None:
    """Delete those of ``item_ids`` that are kept tag-call inputs (not reported): ones that cannot be embedded."""
    if item_ids:
        await session.execute(delete(DataItem).where(DataItem.id.in_(list(item_ids)), DataItem.origin == "input"))
