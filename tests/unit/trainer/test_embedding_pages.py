"""Stored vectors and a dataset's reports are read in keyset pages: every page size gives the same result, and no
statement returns more than one page of rows (a 100k-item refit never holds its whole result as rows)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import DataItem, Report
from tests.unit.trainer.helpers import DIM, seed
from trainer import repository


@contextmanager
def rows_read(sessions: async_sessionmaker[AsyncSession], marker: str) -> Iterator[list[int]]:
    """The row count of each statement containing ``marker`` run on the sessions' engine inside the block."""
    counts: list[int] = []

    def after(conn: object, cursor: Any, statement: str, *_: object) -> None:
        if marker in statement:
            counts.append(int(cursor.rowcount))

    engine = sessions.kw["bind"].sync_engine
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield counts
    finally:
        event.remove(engine, "after_cursor_execute", after)



async def _store_all(sessions: async_sessionmaker[AsyncSession], dataset_id: int,
                     model_id: str) -> dict[int, np.ndarray]:
    """Every item of the dataset embedded by ``model_id`` (a vector unique to the item), plus one kept
    tag-call input that nobody reported; returns item id -> vector."""
    async with sessions.begin() as s:
        s.add(DataItem(dataset_id=dataset_id, kind="text", content="an input", content_hash="f" * 64,
                       origin="input"))
        await s.flush()
        ids = sorted((await s.scalars(DataItem.__table__.select().with_only_columns(DataItem.id)
                                      .where(DataItem.dataset_id == dataset_id))).all())
        vectors = np.random.default_rng(0).normal(size=(len(ids), DIM)).astype(np.float32)
        await repository.store_embeddings(s, model_id, ids, vectors)
        await repository.store_embeddings(s, "other@1", ids[:3], vectors[:3] + 1)  # another model's: never read
    return dict(zip(ids, vectors, strict=True))


@pytest.mark.parametrize("page", [1, 4, 5000])
async def test_reported_and_pool_embeddings_read_in_pages(sessions: async_sessionmaker[AsyncSession],
                                                           page: int) -> None:
    dataset_id, _ = await seed(sessions, per_group=5)
    other_id, _ = await seed(sessions, per_group=2)  # another dataset's items are never read
    stored = await _store_all(sessions, dataset_id, "m@1")
    await _store_all(sessions, other_id, "m@1")
    async with sessions() as s:
        reported = {r.item_id for r in await repository.dataset_reports(s, dataset_id)}
    with rows_read(sessions, "embedding.vector") as rows_per_statement:
        async with sessions() as s:
            ids, matrix = await repository.reported_embeddings(s, dataset_id, "m@1", page=page)
            pool_ids, pool = await repository.pool_embeddings(s, dataset_id, "m@1", page=page)
    assert ids.tolist() == sorted(reported) and len(reported) == 15
    np.testing.assert_array_equal(matrix, np.stack([stored[i] for i in sorted(reported)]))
    assert pool_ids.tolist() == sorted(stored) and len(stored) == 16  # the unreported input too
    np.testing.assert_array_equal(pool, np.stack([stored[i] for i in sorted(stored)]))
    assert matrix.dtype == np.float32 and matrix.flags.writeable
    assert max(rows_per_statement) <= page
    # 15 then 16 rows: ceil(n / page) statements each, one more when the last page is full.
    assert len(rows_per_statement) == 15 // page + 1 + 16 // page + 1


async def test_no_embedding_reads_empty(sessions: async_sessionmaker[AsyncSession]) -> None:
    dataset_id, _ = await seed(sessions, per_group=1)
    async with sessions() as s:
        ids, matrix = await repository.reported_embeddings(s, dataset_id, "m@1")
    assert ids.shape == (0,) and matrix.shape == (0, 0)


@pytest.mark.parametrize("page", [1, 4, 5000])
async def test_dataset_reports_read_in_pages(sessions: async_sessionmaker[AsyncSession], page: int) -> None:
    dataset_id, _ = await seed(sessions, per_group=5)  # 15 items, 18 reports: 3 items carry two, split by pages
    await seed(sessions, per_group=2)  # another dataset's reports are never read
    async with sessions() as s:
        want = [tuple(r) for r in await s.execute(
            select(Report.item_id, Report.tag_id, Report.positive, DataItem.kind)
            .join(DataItem, DataItem.id == Report.item_id).where(Report.dataset_id == dataset_id))]
    with rows_read(sessions, "FROM report") as rows_per_statement:
        async with sessions() as s:
            got = await repository.dataset_reports(s, dataset_id, page=page)
    assert [(r.item_id, r.tag_id, r.positive, r.kind) for r in got] == sorted(want) and len(want) == 18
    assert max(rows_per_statement) <= page
    assert len(rows_per_statement) == 18 // page + 1
