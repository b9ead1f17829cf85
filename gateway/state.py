"""What the gateway's lifespan builds and every request shares."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.datasetcache import DatasetCache
from gateway.outbox import OutboxPublisher
from gateway.predictions import PredictionCounter
from gateway.ratelimit import RateLimiter
from gateway.tokens import TokenCache
from shared.bus import Bus
from shared.settings import GatewaySettings


@dataclass
class AppState:
    settings: GatewaySettings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    bus: Bus
    outbox: OutboxPublisher
    limiter: RateLimiter
    predictions: PredictionCounter
    tokens: TokenCache
    datasets: DatasetCache
