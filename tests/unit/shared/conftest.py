"""Fixtures of the shared-package tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.bus import Bus, ensure_streams


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    """A client bus with every stream and bucket declared (a module may define its own ``bus``)."""
    bus = await Bus.connect(nats_url, "test-shared")
    await ensure_streams(bus.js)
    yield bus
    await bus.close(5)
