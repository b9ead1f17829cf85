"""Wrong tokens cost bounded database work: a lookup is charged to the client's address, a token found unknown is
refused from memory for a while, and valid clients keep being served during a flood of guesses."""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from gateway.infra.ratelimit import OverRate, RateLimiter
from gateway.infra.tokens import TokenCache
from tests.unit.gateway.harness import Gateway


def _token_lookups(gw: Gateway) -> list[str]:
    lookups: list[str] = []

    def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "token_hash" in statement:
            lookups.append(statement)

    event.listen(gw.state.engine.sync_engine, "before_cursor_execute", on_execute)
    return lookups


@asynccontextmanager
async def _client_at(gw: Gateway, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the same app whose requests come from ``address``."""
    transport = httpx.ASGITransport(app=gw.app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://kashf.test") as client:
        yield client


async def _list(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/api/list_datasets/", json={}, headers={"Authorization": f"Token {token}"})


async def test_a_flood_of_random_tokens_costs_bounded_lookups_and_valid_clients_keep_working(
    gateway_factory: Callable[..., Any],
) -> None:
    # token_cache_s=0: every valid request is looked up again, as when its cache entry has just expired.
    async with gateway_factory(rate_per_ip_per_minute=60, rate_per_ip_burst=20, token_cache_s=0) as gw:
        token = await gw.token("acme")
        lookups = _token_lookups(gw)
        async with _client_at(gw, "10.0.0.1") as flooder, _client_at(gw, "10.0.0.2") as other:
            assert (await _list(flooder, token)).status_code == 200  # found once from the flooding address
            started = time.monotonic()
            flood = asyncio.gather(*(_list(flooder, secrets.token_urlsafe(32)) for _ in range(300)))
            valid = [await _list(client, token) for _ in range(10) for client in (flooder, other)]
            answers = await flood
            elapsed = time.monotonic() - started
    assert [r.status_code for r in valid] == [200] * 20
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {401, 429} and statuses.count(401) <= 20 + math.ceil(elapsed) + 1
    limited = next(r for r in answers if r.status_code == 429)
    assert limited.json()["error"] == "rate_limited" and "KASHF_RATE_PER_IP_PER_MINUTE" in limited.json()["detail"]
    assert int(limited.headers["Retry-After"]) >= 1
    # One lookup per guess let through (burst 20, one a second more) and one per valid request (no cache).
    guesses = len(lookups) - 21
    assert guesses == statuses.count(401) and guesses <= 20 + math.ceil(elapsed) + 1


async def test_another_address_is_not_limited_by_a_flood(gateway_factory: Callable[..., Any]) -> None:
    async with gateway_factory(rate_per_ip_per_minute=1, rate_per_ip_burst=3) as gw:
        token = await gw.token("acme")
        async with _client_at(gw, "10.0.0.1") as flooder, _client_at(gw, "10.0.0.2") as newcomer:
            flood = [(await _list(flooder, secrets.token_urlsafe(32))).status_code for _ in range(6)]
            assert flood == [401, 401, 401, 429, 429, 429]
            assert (await _list(newcomer, token)).status_code == 200  # its first lookup: its own bucket
            assert (await _list(newcomer, "wrong")).status_code == 401


async def test_a_repeated_wrong_token_is_looked_up_once(gw: Gateway) -> None:
    lookups = _token_lookups(gw)
    first = await asyncio.gather(*(gw.post("/api/list_datasets/", {}, "not-a-token") for _ in range(20)))
    later = [await gw.post("/api/list_datasets/", {}, "not-a-token") for _ in range(20)]
    assert {r.status_code for r in first + later} == {401}
    assert len(lookups) == 1


async def test_a_revoked_token_is_refused_and_then_remembered(gateway_factory: Callable[..., Any]) -> None:
    async with gateway_factory(token_cache_s=0) as gw:  # every request looks its token up again
        token = await gw.token("acme")
        assert (await gw.post("/api/list_datasets/", {}, token)).status_code == 200
        async with gw.state.unit_of_work() as uow:
            [row] = await uow.repo.find_tokens(token[:8])
            await uow.repo.revoke_token(row.id)
            await uow.commit()
        lookups = _token_lookups(gw)
        assert [(await gw.post("/api/list_datasets/", {}, token)).status_code for _ in range(3)] == [401] * 3
    assert len(lookups) == 1


def test_address_buckets_say_when_to_retry_and_stay_bounded() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=6, burst=1, max_keys=2, clock=lambda: now[0])
    limiter.check("a")
    with pytest.raises(OverRate) as over:
        limiter.check("a")
    assert over.value.retry_after_s == 10  # one token every 10 s
    now[0] = 4.0
    with pytest.raises(OverRate) as over:
        limiter.check("a")
    assert over.value.retry_after_s == 6
    limiter.check("b")
    limiter.check("c")  # a third address evicts the least recently used bucket ("a"), which starts full
    limiter.check("a")


async def test_unknown_tokens_are_remembered_for_their_ttl_only() -> None:
    now = [0.0]
    cache = TokenCache(5.0, 30.0, clock=lambda: now[0])
    loads: list[int | None] = []

    async def lookup(found: int | None) -> int | None:
        loads.append(found)
        return found

    assert await cache.get_or_load("bad", lambda: lookup(None)) is None
    assert await cache.get_or_load("bad", lambda: lookup(None)) is None  # from memory
    assert cache.known_unknown("bad") and not cache.was_found("bad")
    now[0] = 31.0
    assert not cache.known_unknown("bad")
    assert await cache.get_or_load("bad", lambda: lookup(7)) == 7  # looked up again: found this time
    now[0] = 40.0
    assert cache.get("bad") is None and cache.was_found("bad")  # expired, but known to have been found
    assert loads == [None, 7]
