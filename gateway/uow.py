"""The gateway's one unit of work: a transaction, and what must follow its commit and never precede it."""

from __future__ import annotations

from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.infra.datasetcache import DatasetCache
from gateway.infra.outbox import OutboxEvent, OutboxPublisher
from gateway.repository import Repository
from shared.bus import Bus
from shared.schemas.events import DatasetsChanged
from shared.subjects import DATASETS_CHANGED


class UnitOfWork:
    """``async with state.unit_of_work() as uow:`` SQL through ``uow.repo``, then ``await uow.commit()``.
    Services say what the work changed (``stage``, ``dataset_changed``); leaving the block without a commit
    rolls back and forgets it. The session takes a pooled connection only at its first statement."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        outbox: OutboxPublisher,
        datasets: DatasetCache,
        bus: Bus,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._outbox = outbox
        self._datasets = datasets
        self._bus = bus
        self._events: list[OutboxEvent] = []
        self._changed: set[int] = set()

    async def __aenter__(self) -> UnitOfWork:
        self.session = self._sessionmaker()
        self.repo = Repository(self.session)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._events.clear()
        self._changed.clear()
        await self.session.close()  # rolls back whatever was not committed

    def stage(self, *events: OutboxEvent) -> None:
        """Publish these to JetStream once this work commits (their outbox rows are part of it)."""
        self._events.extend(events)

    def dataset_changed(self, dataset_id: int) -> None:
        """Tagging's cached view of this dataset (its kind, tags or head) is dropped once this work commits."""
        self._changed.add(dataset_id)

    async def commit(self) -> None:
        """Commit; then publish the staged events and drop, here and by broadcast in the other replicas,
        the cached views of the changed datasets."""
        events, self._events = self._events, []
        outbox_ids = await self.repo.next_outbox_ids(len(events)) if events else []
        await self.repo.add_outbox([event.row(oid) for oid, event in zip(outbox_ids, events, strict=True)])
        if self.session.in_transaction():  # work served from the caches never began one
            await self.session.commit()
        self._outbox.publish_soon(outbox_ids)
        changed, self._changed = sorted(self._changed), set()
        if changed:
            self._datasets.invalidate(changed)
            message = DatasetsChanged(dataset_ids=changed, origin=self._datasets.instance_id)
            await self._bus.broadcast(DATASETS_CHANGED, message)
