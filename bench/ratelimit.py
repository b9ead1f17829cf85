"""What the shared per-account rate limit (gateway.infra.sharedrate) adds to a request: latency of one
``check`` against the per-process bucket it replaced (the baseline, measured in the same run), and KV writes
per request. A private nats-server (JetStream); the bucket as deployed (in memory).

An account sends at half its limit or at twice it (the defaults: 600 a minute, bursts of 120), through one
replica or two taking turns. The calls run back to back; the limiters' clock moves by the account's request
interval per call, so the token arithmetic is that of the named traffic. Run: ``python -m bench.ratelimit``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import statistics
import tempfile
import time
from pathlib import Path

from devtools import servers
from gateway.infra.ratelimit import OverRate, RateLimiter
from gateway.infra.sharedrate import SharedRateLimiter
from shared.bus import Bus
from shared.bus.streams import declare_key_value, rate_config

PER_MINUTE, BURST = 600, 120


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def connected(bus: Bus) -> bool:
    return bus.nc.is_connected


async def case(buses: list[Bus], replicas: int, rate_s: float, calls: int) -> tuple[list[float], float, float]:
    """(ms per call, KV writes per call, share admitted) of ``calls`` at ``rate_s`` over ``replicas`` (0: the
    per-process bucket alone)."""
    clock = Clock()
    kvs, limiters = [], []
    bucket = f"bench-rate-{replicas}-{rate_s:g}"
    for bus in buses[:max(replicas, 1)]:
        local = RateLimiter(PER_MINUTE, BURST, clock=clock)
        if replicas:
            kv = await declare_key_value(bus.js, dataclasses.replace(rate_config(), bucket=bucket), None)
            kvs.append(kv)
            limiters.append(SharedRateLimiter(kv, functools.partial(connected, bus), PER_MINUTE, BURST,
                                              local=local, clock=clock))
    samples: list[float] = []
    admitted = 0
    for n in range(calls):
        clock.now += 1 / rate_s
        start = time.perf_counter()
        try:
            if replicas:
                await limiters[n % replicas].check(1)
            else:
                local.check(1)
            admitted += 1
        except OverRate:
            pass
        samples.append((time.perf_counter() - start) * 1000)
    writes = 0.0
    if replicas:
        # Every revision of this bucket is one write.
        writes = ((await kvs[0].get(limiters[0].key(1))).revision or 0) / calls
        await buses[0].js.delete_key_value(bucket)
    return samples, writes, admitted / calls


async def run(calls: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = servers.start_nats(Path(tmp) / "nats")
        try:
            buses = [await Bus.connect(url, f"bench-{i}") for i in range(2)]
            for name, replicas, rate_s in (
                ("per-process bucket, half the limit (baseline)", 0, 5.0),
                ("shared, half the limit, one replica", 1, 5.0),
                ("shared, half the limit, two replicas in turn", 2, 5.0),
                ("shared, twice the limit, one replica", 1, 20.0),
                ("shared, twice the limit, two replicas in turn", 2, 20.0),
            ):
                rows.append((name, *await case(buses, replicas, rate_s, calls)))
            for bus in buses:
                await bus.close(2)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    base = statistics.median(rows[0][1])
    print(f"\nrate limit check, {calls} calls per case, {PER_MINUTE}/min bursts of {BURST} "
          f"(ms; x: p50 over the baseline's p50)")
    print(f"{'case':<48} {'p50':>7} {'p99':>7} {'x p50':>7} {'KV writes/call':>15} {'admitted':>9}")
    for name, samples, writes, share in rows:
        q = statistics.quantiles(samples, n=100)
        print(f"{name:<48} {q[49]:7.3f} {q[98]:7.3f} {q[49] / base:7.1f} {writes:15.2f} {share:9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    asyncio.run(run(args.calls))


if __name__ == "__main__":
    main()
