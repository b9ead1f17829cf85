"""Transactional outbox: events are written with their cause (``UnitOfWork.stage``) and published to
JetStream after commit. A row's ``msg_id`` is fixed when it is written, so republishing it (after a crash,
or by two replicas) is dropped by JetStream's duplicate window; the sweeper publishes what was left behind."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import BaseModel, RootModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.repository import Repository
from shared.bus import Bus
from shared.errors import KashfError

log = structlog.get_logger(__name__)


class _Payload(RootModel[dict[str, Any]]):
    """A stored payload, published as it was written."""


@dataclass(frozen=True)
class OutboxEvent:
    """A message to publish once the transaction that caused it commits; its id is f"{key}-{random uuid}"."""

    subject: str
    key: str
    message: BaseModel

    def row(self, outbox_id: int) -> dict[str, Any]:
        return {
            "id": outbox_id,
            "subject": self.subject,
            # Unique for all time, not per database: row ids repeat after a restore or a recreated database
            # (or in a second deployment on the same NATS), and JetStream would drop the event as a duplicate.
            "msg_id": f"{self.key}-{uuid.uuid4().hex}",
            "payload": self.message.model_dump(mode="json"),
        }


class OutboxPublisher:
    """Publishes outbox rows: right after a commit (best effort) and by a periodic sweep."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], bus: Bus, *, sweep_s: float, batch: int = 200
    ) -> None:
        self._sessionmaker = sessionmaker
        self._bus = bus
        self._sweep_s = sweep_s
        self._batch = batch
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def publish(self, ids: Sequence[int] | None = None) -> int:
        """Publish unpublished rows (only ``ids`` when given, else the oldest batch); returns how many."""
        async with self._sessionmaker() as session:
            repo = Repository(session)
            rows = await repo.lock_unpublished(ids, self._batch)
            done: list[int] = []
            for row in rows:
                try:
                    await self._bus.publish_event(row.subject, _Payload(row.payload), msg_id=row.msg_id)
                except KashfError:
                    # The stream is away; what is left stays for the next sweep.
                    log.warning("outbox_publish_failed", outbox_id=row.id, subject=row.subject)
                    break
                done.append(row.id)
            await repo.mark_published(done)
            await session.commit()
        return len(done)

    def publish_soon(self, ids: Sequence[int]) -> None:
        """Publish freshly committed rows in the background; a failure is left to the sweeper."""
        if not ids:
            return
        task = asyncio.create_task(self._publish_quietly(list(ids)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_quietly(self, ids: list[int]) -> None:
        try:
            await self.publish(ids)
        except Exception:
            log.exception("outbox_publish_error")

    async def sweep(self) -> int:
        """Publish every unpublished row, batch by batch."""
        total = 0
        while True:
            n = await self.publish()
            total += n
            if n < self._batch:
                return total

    async def _sweep_forever(self) -> None:
        while True:
            try:
                n = await self.sweep()
                if n:
                    log.info("outbox_swept", published=n)
            except Exception:
                log.exception("outbox_sweep_error")
            await asyncio.sleep(self._sweep_s)

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop sweeping and let in-flight publications finish."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout_s)
