"""The end of every gateway transaction: commit, then what must follow a commit and never precede it."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from gateway import datasetcache, outbox
from gateway.state import AppState
from shared.schemas.events import DatasetsChanged
from shared.subjects import DATASETS_CHANGED


async def commit(state: AppState, session: AsyncSession) -> None:
    """Commit, then publish the outbox rows the session wrote and drop (here and, by broadcast, in other
    replicas) the cached views of the datasets it changed."""
    if session.in_transaction():  # a request served from the caches never began one
        await session.commit()
    state.outbox.publish_soon(outbox.pending_ids(session))
    if changed := datasetcache.changed_ids(session):
        state.datasets.invalidate(changed)
        message = DatasetsChanged(dataset_ids=changed, origin=state.datasets.instance_id)
        await state.bus.broadcast(DATASETS_CHANGED, message)


async def rollback(session: AsyncSession) -> None:
    await session.rollback()
    datasetcache.changed_ids(session)  # nothing changed after all
    outbox.pending_ids(session)
