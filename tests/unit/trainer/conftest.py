"""Fixtures of the trainer tests: the session database emptied, a bus with the events stream emptied."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.bus import Bus, ensure_streams
from shared.db.engine import make_engine, make_sessionmaker
from shared.subjects import EVENTS_STREAM


@pytest.fixture
async def engine(clean_db: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(clean_db, pool_size=4)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    """A client bus; the events stream starts empty, so a new durable sees only this test's events."""
    bus = await Bus.connect(nats_url, "test-trainer")
    await ensure_streams(bus.js)
    await bus.js.purge_stream(EVENTS_STREAM)
    yield bus
    await bus.close(5)
