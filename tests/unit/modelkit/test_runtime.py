"""Shutdown order of every service: consumers stop while the bus still works, models after it drained."""

from __future__ import annotations

from modelkit.runtime import Readiness, stop_service
from shared.bus import Bus


async def test_drain_hooks_run_on_a_live_bus_and_shutdown_hooks_after_it_closed(nats_url: str) -> None:
    bus = await Bus.connect(nats_url, "runtime-test")
    seen: list[tuple[str, bool]] = []

    async def consumer_stop() -> None:
        seen.append(("before_drain", bus.nc.is_connected))

    async def model_stop() -> None:
        seen.append(("shutdown", bus.nc.is_closed))

    readiness = Readiness()
    readiness.before_drain(consumer_stop)
    readiness.on_shutdown(model_stop)
    await stop_service(bus, readiness, drain_timeout_s=10.0)
    assert seen == [("before_drain", True), ("shutdown", True)]
