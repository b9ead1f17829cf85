"""Per-tag prediction counters, summed in memory and written every second in one transaction of their own.
A crash loses at most the last second of counts; dataset_info adds what is still pending here."""

# One UPDATE per tagging request made concurrent requests lock the same tag rows in different orders
# (Postgres deadlocks, measured with bench/text.py at 32 clients) and was the gateway's largest cost.

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterable

import structlog
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.repository import Repository

log = structlog.get_logger(__name__)


class PredictionCounter:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, flush_s: float = 1.0) -> None:
        self._sessionmaker = sessionmaker
        self._flush_s = flush_s
        self._pending: Counter[int] = Counter()
        self._task: asyncio.Task[None] | None = None

    def add(self, tag_ids: Iterable[int]) -> None:
        self._pending.update(tag_ids)

    def pending(self, tag_id: int) -> int:
        return self._pending.get(tag_id, 0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            await self.flush()

    async def flush(self) -> None:
        counts, self._pending = self._pending, Counter()
        if not counts:
            return
        try:
            async with self._sessionmaker() as session:
                await Repository(session).add_predictions(dict(counts))
                await session.commit()
        except (OSError, DBAPIError, OperationalError) as exc:
            self._pending.update(counts)  # kept for the next flush
            log.warning("predictions_flush_failed", error=type(exc).__name__, tags=len(counts))
