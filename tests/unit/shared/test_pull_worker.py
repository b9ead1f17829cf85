"""The JetStream pull worker against a real nats-server: each test gets a stream and a durable of its own."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig
from pydantic import BaseModel

from shared.bus import connect
from shared.bus.pull import Delivery, HandBack, PullConfig, PullWorker
from shared.errors import Unavailable


class Job(BaseModel):
    n: int


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    """Poll ``check`` until it holds; fail the test past ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


@dataclass
class Queue:
    nc: NATS
    stream: str
    subject: str
    workers: list[PullWorker] = field(default_factory=list)

    def config(self, durable: str = "worker", **kw: Any) -> PullConfig:
        options: dict[str, Any] = {"ack_wait_s": 30.0, "max_deliver": 5, "retry_delay_s": 0.05}
        return PullConfig(stream=self.stream, durable=durable, subjects=(self.subject,), **(options | kw))

    async def worker(self, handler: Callable[[Delivery], Awaitable[None]], **kw: Any) -> PullWorker:
        worker = PullWorker(self.nc, self.config(**kw), handler)
        await worker.start()
        self.workers.append(worker)
        return worker

    async def publish(self, *payloads: bytes) -> None:
        js = self.nc.jetstream()
        for data in payloads:
            await js.publish(self.subject, data)

    async def all_acked(self, count: int, durable: str = "worker") -> bool:
        """The first ``count`` messages are settled for good (acked or terminated) and none is held."""
        info = await self.nc.jetstream().consumer_info(self.stream, durable)
        return info.ack_floor.stream_seq >= count and not info.num_ack_pending and not info.num_pending

    async def terminations(self, durable: str = "worker") -> asyncio.Queue[dict[str, Any]]:
        """The server's advisories for messages this durable terminated."""
        got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def on_msg(msg: Msg) -> None:
            got.put_nowait(json.loads(msg.data))

        await self.nc.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{self.stream}.{durable}", cb=on_msg)
        await self.nc.flush()
        return got


@pytest.fixture
async def queue(nats_url: str) -> AsyncIterator[Queue]:
    nc = await connect(nats_url, "test-pull-worker")
    token = secrets.token_hex(6)
    q = Queue(nc, f"TEST_PULL_{token}", f"test.pull.{token}")
    await nc.jetstream().add_stream(StreamConfig(name=q.stream, subjects=[q.subject], storage=StorageType.MEMORY))
    yield q
    for worker in q.workers:
        await worker.stop(5)
    await nc.jetstream().delete_stream(q.stream)
    await nc.close()


async def test_handled_messages_are_acked(queue: Queue) -> None:
    seen: list[tuple[bytes, int]] = []

    async def handle(d: Delivery) -> None:
        seen.append((d.msg.data, d.count))

    await queue.worker(handle, batch=4, concurrency=4)
    await queue.publish(b"a", b"b", b"c")
    await until(lambda: queue.all_acked(3))
    assert sorted(seen) == [(b"a", 1), (b"b", 1), (b"c", 1)]


async def test_transient_failure_is_naked_with_a_doubling_delay(queue: Queue) -> None:
    calls: list[tuple[int, float]] = []

    async def handle(d: Delivery) -> None:
        calls.append((d.count, time.monotonic()))
        if d.count < 3:
            raise Unavailable("model service away")

    await queue.worker(handle, retry_delay_s=0.4)
    await queue.publish(b"job")
    await until(lambda: queue.all_acked(1))
    assert [count for count, _ in calls] == [1, 2, 3]
    first_gap, second_gap = calls[1][1] - calls[0][1], calls[2][1] - calls[1][1]
    # The server waited out each nak's delay (0.4 s, then 0.8 s), far short of ack_wait (30 s).
    assert 0.35 <= first_gap < 10
    assert 0.75 <= second_gap < 10


def test_retry_delay_doubles_up_to_its_cap() -> None:
    config = PullConfig(stream="S", durable="d", subjects=("s",), retry_delay_s=5.0, max_retry_delay_s=30.0)
    assert [Delivery(None, n, config).retry_delay_s for n in (1, 2, 3, 4, 9)] == [5, 10, 20, 30, 30]


@pytest.mark.parametrize("poison", ["not json", "bug"])
async def test_poison_is_terminated_at_once(queue: Queue, poison: str) -> None:
    terminated = await queue.terminations()
    calls: list[int] = []

    async def handle(d: Delivery) -> None:
        calls.append(d.count)
        if d.msg.data == b"ok":
            return
        if poison == "bug":
            raise KeyError("a bug never fixes itself on retry")
        Job.model_validate_json(d.msg.data)

    await queue.worker(handle)
    await queue.publish(b"{broken", b"ok")
    advisory = await asyncio.wait_for(terminated.get(), 15)
    assert advisory["stream_seq"] == 1 and advisory["deliveries"] == 1
    await until(lambda: queue.all_acked(2))
    assert calls == [1, 1]  # the poison once, the good message once


async def test_transient_failure_is_terminated_after_max_deliveries(queue: Queue) -> None:
    terminated = await queue.terminations()
    seen: list[tuple[int, bool]] = []

    async def handle(d: Delivery) -> None:
        exc = Unavailable("still away")
        seen.append((d.count, d.will_retry(exc)))
        raise exc

    await queue.worker(handle, max_deliver=3)
    await queue.publish(b"job")
    advisory = await asyncio.wait_for(terminated.get(), 15)
    assert advisory["deliveries"] == 3
    assert seen == [(1, True), (2, True), (3, False)]
    await until(lambda: queue.all_acked(1))


async def test_heartbeat_keeps_a_slow_handler_past_ack_wait(queue: Queue) -> None:
    calls: list[int] = []

    async def handle(d: Delivery) -> None:
        calls.append(d.count)
        await asyncio.sleep(6.0)  # the work: three times ack_wait

    # Room for a second handler: a redelivery past ack_wait would show up as a second call.
    await queue.worker(handle, ack_wait_s=2.0, concurrency=2)
    await queue.publish(b"slow")
    await until(lambda: queue.all_acked(1))
    assert calls == [1]


async def test_at_most_concurrency_messages_are_held(queue: Queue) -> None:
    gate = asyncio.Event()
    running: list[bytes] = []
    most = 0

    async def handle(d: Delivery) -> None:
        nonlocal most
        running.append(d.msg.data)
        most = max(most, len(running))
        await gate.wait()
        running.remove(d.msg.data)

    await queue.worker(handle, batch=8, concurrency=2)
    await queue.publish(*(str(i).encode() for i in range(6)))

    async def two_running() -> bool:
        return len(running) == 2

    await until(two_running)
    info = await queue.nc.jetstream().consumer_info(queue.stream, "worker")
    assert info.num_ack_pending == 2 and info.num_pending == 4  # the others were never fetched
    gate.set()
    await until(lambda: queue.all_acked(6))
    assert most == 2


async def test_stop_lets_handlers_finish_and_hands_back_the_rest(queue: Queue) -> None:
    acked_first: list[bytes] = []

    async def handle(d: Delivery) -> None:
        if d.msg.data == b"finishes":
            await worker.stopping.wait()
            await asyncio.sleep(0.2)  # still working when stop begins
            acked_first.append(d.msg.data)
        elif d.msg.data == b"waits":
            await worker.stopping.wait()  # e.g. debouncing: nothing to finish, give it back
            raise HandBack
        else:
            await asyncio.sleep(3600)  # stuck: cancelled at the stop timeout

    worker = await queue.worker(handle, concurrency=4)  # room left: a pull request is open at stop
    await queue.publish(b"finishes", b"waits", b"stuck")
    await until(lambda: _held(queue, 3))
    started = time.monotonic()
    await worker.stop(timeout_s=1.0)
    assert time.monotonic() - started < 10  # 1 s for the handlers, 1 s at most for a fetch to end
    assert acked_first == [b"finishes"]
    assert not worker.running
    await queue.publish(b"after stop")

    later: list[tuple[bytes, int]] = []

    async def take(d: Delivery) -> None:
        later.append((d.msg.data, d.count))

    await queue.worker(take, concurrency=4)
    await until(lambda: queue.all_acked(4))
    # Handed back at once (ack_wait is 30 s); the finished one was acked, the stopped worker pulled no more.
    assert sorted(later) == [(b"after stop", 1), (b"stuck", 2), (b"waits", 2)]


async def _held(queue: Queue, count: int) -> bool:
    info = await queue.nc.jetstream().consumer_info(queue.stream, "worker")
    return info.num_ack_pending == count
