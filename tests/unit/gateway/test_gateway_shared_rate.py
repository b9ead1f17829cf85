"""The per-account rate limit shared by gateway replicas through JetStream KV (gateway.infra.sharedrate): each
limiter below has a NATS connection of its own, as each replica does, and they share one bucket."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import structlog.testing
from nats.js.kv import KeyValue

from gateway.infra.ratelimit import OverRate, RateLimiter
from gateway.infra.sharedrate import SharedRateLimiter
from shared.bus import Bus
from shared.bus.streams import declare_key_value, rate_config


class Clock:
    """One wall clock for every replica of a test, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def replicas(nats_url: str) -> AsyncIterator[Callable[..., SharedRateLimiter]]:
    """``make(per_minute, burst)``: a limiter on a connection of its own, all on this test's own bucket."""
    buses: list[Bus] = []
    bucket = f"test-rate-{uuid.uuid4().hex[:8]}"
    config = dataclasses.replace(rate_config(), bucket=bucket)
    clock = Clock()
    made: list[KeyValue] = []

    async def connect() -> KeyValue:
        bus = await Bus.connect(nats_url, "test-rate")
        buses.append(bus)
        return await declare_key_value(bus.js, config, None)

    for _ in range(3):
        made.append(await connect())

    def make(per_minute: int, burst: int, index: int = 0, **kwargs: object) -> SharedRateLimiter:
        bus = buses[index]
        return SharedRateLimiter(made[index], lambda: bus.nc.is_connected, per_minute, burst,
                                 local=RateLimiter(per_minute, burst, clock=clock), clock=clock, **kwargs)

    make.clock = clock  # type: ignore[attr-defined]
    make.buses = buses  # type: ignore[attr-defined]
    make.kv = made[0]  # type: ignore[attr-defined]
    yield make
    await buses[0].js.delete_key_value(bucket)
    for bus in buses:
        await bus.close(2)


async def admitted(limiter: SharedRateLimiter, account: int, n: int) -> int:
    """How many of ``n`` concurrent requests of the account the limiter lets through."""
    async def one() -> bool:
        try:
            await limiter.check(account)
        except OverRate:
            return False
        return True

    return sum(await asyncio.gather(*(one() for _ in range(n))))


async def test_two_replicas_share_one_burst_and_one_rate(replicas: Callable[..., SharedRateLimiter]) -> None:
    a, b = replicas(60, 20, 0), replicas(60, 20, 1)
    # Each replica alone would admit 20 (its own bucket); together they admit the one burst, no more.
    got = await asyncio.gather(admitted(a, 1, 30), admitted(b, 1, 30))
    assert sum(got) == 20, got
    with pytest.raises(OverRate) as refused:
        await b.check(1)
    assert refused.value.retry_after_s == 1  # 60 a minute: the next token in a second
    assert await admitted(a, 2, 5) == 5  # another account has its own bucket
    replicas.clock.now += 5.0  # type: ignore[attr-defined]  # 5 s at one a second: 5 tokens, wherever asked
    got = await asyncio.gather(admitted(a, 1, 10), admitted(b, 1, 10))
    assert sum(got) == 5, got


async def test_requests_alternating_over_three_replicas_get_the_rate_not_three_times_it(
    replicas: Callable[..., SharedRateLimiter],
) -> None:
    limiters = [replicas(600, 10, i) for i in range(3)]  # 10 a second, bursts of 10
    clock = replicas.clock  # type: ignore[attr-defined]
    passed = 0
    for step in range(300):  # 10 s of 30 requests a second, spread over the replicas: 3 times the rate
        clock.now += 0.1 / 3
        try:
            await limiters[step % 3].check(7)
            passed += 1
        except OverRate:
            pass
    # 10 s of rate (1,000 ms of requests at 33 ms) plus the burst: 10 + 10 * 10 = 110 at most. Leases left unused
    # at the end (a slice is at most 2 here) may fall short of that by 2 per replica.
    assert 110 - 3 * 2 <= passed <= 110, passed


async def test_an_account_far_below_its_limit_pays_one_store_write_per_slice(
    replicas: Callable[..., SharedRateLimiter],
) -> None:
    limiter = replicas(600, 120, 0)  # the defaults: slices of 10
    assert limiter.max_slice == 10
    assert await admitted(limiter, 3, 1) == 1
    first = (await replicas.kv.get(limiter.key(3))).revision  # type: ignore[attr-defined]
    for _ in range(39):
        await limiter.check(3)
    last = (await replicas.kv.get(limiter.key(3))).revision  # type: ignore[attr-defined]
    assert last - first == 3  # 40 requests, 4 writes (each revision is one write to this bucket)


async def test_gateways_with_different_limits_on_one_nats_keep_separate_buckets(
    replicas: Callable[..., SharedRateLimiter],
) -> None:
    # A second gateway with a tiny limit (the client tests' tight gateway, a rate change rolling out) drains its
    # bucket of an account; the account's requests to the usual gateway are still admitted up to its burst.
    tight, usual = replicas(60, 4, 0), replicas(600, 120, 1)
    assert await admitted(tight, 9, 10) == 4
    assert await admitted(usual, 9, 100) == 100
    assert tight.key(9) != usual.key(9)
    with pytest.raises(OverRate):
        await tight.check(9)


async def test_store_down_falls_back_to_the_replicas_own_bucket_and_logs_once(
    replicas: Callable[..., SharedRateLimiter],
) -> None:
    limiter = replicas(60, 3, 2)
    clock = replicas.clock  # type: ignore[attr-defined]
    await replicas.buses[2].nc.close()  # type: ignore[attr-defined]
    with structlog.testing.capture_logs() as logs:
        assert await admitted(limiter, 5, 10) == 3  # the local bucket's burst: requests go on, limited
        clock.now += 60.0
        assert await admitted(limiter, 5, 1) == 1
    assert [e["event"] for e in logs] == ["rate_limit_store_unavailable"]


async def test_a_store_error_falls_back_then_the_store_is_tried_again(
    replicas: Callable[..., SharedRateLimiter],
) -> None:
    limiter = replicas(60, 2, 0, retry_s=5.0)
    kv: KeyValue = replicas.kv  # type: ignore[attr-defined]
    clock = replicas.clock  # type: ignore[attr-defined]
    bus = replicas.buses[0]  # type: ignore[attr-defined]
    await bus.js.delete_key_value(kv._name)  # the bucket is gone: every read and write fails
    with structlog.testing.capture_logs() as logs:
        assert await admitted(limiter, 9, 4) == 2  # local bucket
        await declare_key_value(bus.js, dataclasses.replace(rate_config(), bucket=kv._name), None)
        clock.now += 6.0  # past retry_s: the store is asked again (a full shared bucket, 2 tokens)
        assert await admitted(limiter, 9, 4) == 2
    assert [e["event"] for e in logs] == ["rate_limit_store_unavailable", "rate_limit_store_back"]


async def test_zero_disables_the_limit(replicas: Callable[..., SharedRateLimiter]) -> None:
    limiter = replicas(0, 0, 0)
    assert await admitted(limiter, 1, 50) == 50
