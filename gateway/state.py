"""What the gateway's lifespan builds and every request shares."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.http_metrics import HttpMetrics
from gateway.infra.datasetcache import DatasetCache
from gateway.infra.outbox import OutboxPublisher
from gateway.infra.predictions import PredictionCounter
from gateway.infra.ratelimit import RateLimiter
from gateway.infra.tokens import TokenCache
from gateway.uow import UnitOfWork
from shared.bus import Bus
from shared.settings import GatewaySettings


@dataclass
class AppState:
    settings: GatewaySettings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    bus: Bus
    outbox: OutboxPublisher
    limiter: RateLimiter  # per account
    addresses: RateLimiter  # per client address, of requests whose token needs a lookup
    predictions: PredictionCounter
    tokens: TokenCache
    datasets: DatasetCache
    metrics: HttpMetrics

    def unit_of_work(self) -> UnitOfWork:
        """A new transaction; its commit publishes its events and invalidates the cached views it changed."""
        return UnitOfWork(self.sessionmaker, outbox=self.outbox, datasets=self.datasets, bus=self.bus)
