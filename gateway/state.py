"""What the gateway's lifespan builds and every request shares."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.http_metrics import HttpMetrics
from gateway.infra.datasetcache import DatasetCache
from gateway.infra.dbfaults import lost_before_commit
from gateway.infra.outbox import OutboxPublisher
from gateway.infra.predictions import PredictionCounter
from gateway.infra.ratelimit import RateLimiter
from gateway.infra.sharedrate import SharedRateLimiter
from gateway.infra.tokens import TokenCache
from gateway.uow import UnitOfWork
from shared.bus import Bus
from shared.settings import GatewaySettings

log = structlog.get_logger(__name__)
T = TypeVar("T")


@dataclass
class AppState:
    settings: GatewaySettings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    bus: Bus
    outbox: OutboxPublisher
    limiter: SharedRateLimiter  # per account, over every replica
    addresses: RateLimiter  # per client address, of requests whose token needs a lookup
    predictions: PredictionCounter
    tokens: TokenCache
    datasets: DatasetCache
    metrics: HttpMetrics

    def unit_of_work(self) -> UnitOfWork:
        """A new transaction; its commit publishes its events and invalidates the cached views it changed."""
        return UnitOfWork(self.sessionmaker, outbox=self.outbox, datasets=self.datasets, bus=self.bus)

    async def transact(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        """``work`` in a new unit of work, committed. A connection lost while a statement ran (nothing committed)
        runs it once more on a fresh connection; lost again, or during the commit, the error propagates (503)."""
        try:
            return await self._transact_once(work)
        except Exception as exc:
            if not lost_before_commit(exc):
                raise
            log.warning("database_connection_lost_retrying", error=str(exc).split("\n", 1)[0])
        return await self._transact_once(work)

    async def _transact_once(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        async with self.unit_of_work() as uow:
            result = await work(uow)
            await uow.commit()
            return result
