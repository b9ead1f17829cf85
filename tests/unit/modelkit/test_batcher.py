"""The dynamic batcher merges concurrent requests, keeps order, sheds load and drains on stop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest
from prometheus_client import CollectorRegistry

from modelkit.batcher import DynamicBatcher
from modelkit.metrics import Metrics, create_metrics
from shared.errors import Overloaded, Unavailable

Factory = Callable[..., DynamicBatcher[int, int]]


class Recorder:
    """A model stand-in: doubles numbers, remembers each call's size and thread, may be slow or gated."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay_s = delay_s
        self.gate = gate
        self.calls: list[list[int]] = []
        self.threads: set[int] = set()
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> Sequence[int]:
        self.calls.append(list(items))
        self.threads.add(threading.get_ident())
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        if self.delay_s:
            time.sleep(self.delay_s)
        if any(i < 0 for i in items):
            raise ValueError(f"negative input in {items}")
        return [2 * i for i in items]


@pytest.fixture
def metrics() -> Metrics:
    return create_metrics(CollectorRegistry())


@pytest.fixture
async def batcher_factory(metrics: Metrics) -> AsyncIterator[Factory]:
    """Started batchers over a Recorder, stopped after the test."""
    made: list[DynamicBatcher[int, int]] = []

    def factory(fn: Recorder, **kw: float) -> DynamicBatcher[int, int]:
        b: DynamicBatcher[int, int] = DynamicBatcher(fn, metrics=metrics, name="test", **kw)  # type: ignore[arg-type]
        b.start()
        made.append(b)
        return b

    yield factory
    for b in made:
        await b.stop()


async def test_concurrent_requests_share_model_calls(batcher_factory: Factory,
                                                      metrics: Metrics) -> None:
    fn = Recorder(delay_s=0.02)
    b = batcher_factory(fn, max_batch=32, max_wait_ms=10)
    results = await asyncio.gather(*(b.submit([i]) for i in range(40)))
    assert results == [[2 * i] for i in range(40)]
    assert len(fn.calls) <= 5, f"40 single-item requests took {len(fn.calls)} model calls"
    assert metrics.batch_size.labels(batcher="test")._sum.get() == 40


async def test_each_request_gets_its_own_outputs_in_order(
        batcher_factory: Factory) -> None:
    fn = Recorder()
    b = batcher_factory(fn, max_batch=8, max_wait_ms=5)
    requests = [list(range(start, start + n)) for start, n in ((0, 13), (100, 1), (200, 30), (300, 7))]
    results = await asyncio.gather(*(b.submit(r) for r in requests))
    assert results == [[2 * i for i in r] for r in requests]


async def test_no_model_call_exceeds_max_batch(batcher_factory: Factory) -> None:
    fn = Recorder()
    b = batcher_factory(fn, max_batch=16, max_wait_ms=5)
    await asyncio.gather(b.submit(list(range(100))), b.submit(list(range(50))))
    assert max(len(c) for c in fn.calls) <= 16
    assert sum(len(c) for c in fn.calls) == 150


async def test_lone_item_waits_at_most_max_wait(batcher_factory: Factory) -> None:
    b = batcher_factory(Recorder(), max_batch=32, max_wait_ms=100)
    start = time.perf_counter()
    assert await b.submit([1]) == [2]
    elapsed = time.perf_counter() - start
    assert 0.08 <= elapsed < 0.6, elapsed


async def test_full_batch_does_not_wait(batcher_factory: Factory) -> None:
    b = batcher_factory(Recorder(), max_batch=4, max_wait_ms=5000)
    start = time.perf_counter()
    assert await b.submit([1, 2, 3, 4]) == [2, 4, 6, 8]
    assert time.perf_counter() - start < 1.0


async def test_model_runs_off_the_event_loop(batcher_factory: Factory) -> None:
    fn = Recorder(delay_s=0.2)
    b = batcher_factory(fn, max_batch=4, max_wait_ms=1)
    job = asyncio.create_task(b.submit([1]))
    ticks = 0
    while not job.done():  # the loop keeps turning while the model works
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks >= 10
    assert threading.get_ident() not in fn.threads


async def test_full_queue_is_refused_at_once(batcher_factory: Factory) -> None:
    gate = threading.Event()
    fn = Recorder(gate=gate)
    b = batcher_factory(fn, max_batch=2, max_wait_ms=1, max_queue=4)
    first = asyncio.create_task(b.submit([1, 2]))  # taken into the (blocked) model call
    await asyncio.to_thread(fn.entered.wait, 5)
    queued = asyncio.create_task(b.submit([3, 4, 5, 6]))  # fills the queue
    await asyncio.sleep(0.01)
    start = time.perf_counter()
    with pytest.raises(Overloaded) as info:
        await b.submit([7])
    assert time.perf_counter() - start < 0.05
    assert info.value.status == 429
    gate.set()
    assert await first == [2, 4]
    assert await queued == [6, 8, 10, 12]


async def test_a_failing_input_fails_only_its_own_request(
        batcher_factory: Factory) -> None:
    fn = Recorder()
    b = batcher_factory(fn, max_batch=32, max_wait_ms=50)
    good1, bad, good2 = await asyncio.gather(
        b.submit([1, 2]), b.submit([-1]), b.submit([3]), return_exceptions=True
    )
    assert good1 == [2, 4]
    assert good2 == [6]
    assert isinstance(bad, ValueError)
    assert fn.calls[0] == [1, 2, -1, 3]  # they were merged, then isolated after the failure


async def test_stop_finishes_queued_work_then_refuses(metrics: Metrics) -> None:
    fn = Recorder(delay_s=0.05)
    b: DynamicBatcher[int, int] = DynamicBatcher(fn, max_batch=2, max_wait_ms=1000, metrics=metrics)
    b.start()
    jobs = [asyncio.create_task(b.submit([i, i + 1])) for i in range(0, 10, 2)]
    await asyncio.sleep(0.01)
    await b.stop()
    assert [j.result() for j in jobs] == [[2 * i, 2 * i + 2] for i in range(0, 10, 2)]
    with pytest.raises(Unavailable):
        await b.submit([1])


async def test_abandoned_request_costs_no_model_time(
        batcher_factory: Factory) -> None:
    gate = threading.Event()
    fn = Recorder(gate=gate)
    b = batcher_factory(fn, max_batch=2, max_wait_ms=1)
    first = asyncio.create_task(b.submit([1, 2]))
    await asyncio.to_thread(fn.entered.wait, 5)
    abandoned = asyncio.create_task(b.submit([50, 51]))
    await asyncio.sleep(0.01)
    abandoned.cancel()
    kept = asyncio.create_task(b.submit([7]))
    await asyncio.sleep(0.01)
    gate.set()
    assert await first == [2, 4]
    assert await kept == [14]
    assert all(50 not in c for c in fn.calls)
