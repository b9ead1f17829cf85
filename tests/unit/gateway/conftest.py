"""Fixtures of the gateway tests: a running app per test on a cleaned database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.unit.gateway.harness import Gateway, make_settings, running, serving


@pytest.fixture
def gateway_factory(clean_db: str, nats_url: str) -> Callable[..., Any]:
    """``async with gateway_factory(max_items=2) as gw:`` runs an app with those settings."""

    def factory(**overrides: Any) -> Any:
        return running(make_settings(clean_db, nats_url, **overrides))

    return factory


@pytest.fixture
async def gw(gateway_factory: Callable[..., Any]) -> AsyncIterator[Gateway]:
    async with gateway_factory() as gateway:
        yield gateway


@pytest.fixture
def serve(clean_db: str, nats_url: str) -> Callable[..., Any]:
    """``async with serve(header_timeout_s=0.5) as served:`` the app behind the real uvicorn server."""
    return lambda **overrides: serving(clean_db, nats_url, **overrides)
