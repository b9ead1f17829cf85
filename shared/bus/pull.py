"""JetStream durable pull consumers: one worker and one retry policy for the trainer and video jobs.

The handler gets each pulled message while a heartbeat (``in_progress``) holds it. It returns: ack.
It raises a transient error: nak with a doubling delay until ``max_deliver``. Anything else: term.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from shared.errors import KashfError, Overloaded, Timeout, Unavailable

log = structlog.get_logger(__name__)


def is_transient(exc: BaseException) -> bool:
    """Failures worth retrying later: a service, the bus or a store away or busy."""
    if isinstance(exc, KashfError):
        return isinstance(exc, Unavailable | Timeout | Overloaded)
    return isinstance(exc, OSError | TimeoutError | nats.errors.Error)


@dataclass(frozen=True)
class PullConfig:
    """A durable consumer of ``stream`` (messages on ``subjects``) and how its worker pulls and retries."""

    stream: str
    durable: str
    subjects: tuple[str, ...]
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    retry_delay_s: float = 5.0  # after a first delivery fails; doubles with each further one
    max_retry_delay_s: float = 600.0
    batch: int = 1  # messages asked for per fetch
    concurrency: int = 1  # messages held (handlers running) at once
    max_ack_pending: int = 1000
    is_transient: Callable[[BaseException], bool] = is_transient

    def consumer(self) -> ConsumerConfig:
        one = len(self.subjects) == 1
        return ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
            filter_subject=self.subjects[0] if one else None,
            filter_subjects=None if one else list(self.subjects),
        )


@dataclass(frozen=True, eq=False)
class Delivery:
    """One pulled message; ``count`` is its delivery number (1 the first time)."""

    msg: Msg
    count: int
    config: PullConfig

    def will_retry(self, exc: BaseException) -> bool:
        """Whether the worker naks (the server redelivers later) rather than terms when the handler raises."""
        return self.count < self.config.max_deliver and self.config.is_transient(exc)

    @property
    def retry_delay_s(self) -> float:
        return float(min(self.config.retry_delay_s * 2 ** (self.count - 1), self.config.max_retry_delay_s))


class HandBack(Exception):
    """Raised by a handler to return its message to the server at once (no delay), e.g. when stopping."""


Handler = Callable[[Delivery], Awaitable[None]]


class PullWorker:
    """Pulls from one durable consumer; runs ``handler`` per message, at most ``concurrency`` at once."""

    def __init__(self, nc: NATS, config: PullConfig, handler: Handler) -> None:
        self.nc = nc
        self.config = config
        self._handler = handler
        self._room = asyncio.Semaphore(config.concurrency)
        self._held: set[Delivery] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._closing = False  # no more fetches (set before _stopping, see stop)
        self._fetching = False
        self._sub: JetStreamContext.PullSubscription | None = None
        self._loops: list[asyncio.Task[None]] = []

    @property
    def running(self) -> bool:
        return bool(self._loops) and not self._loops[0].done() and not self._closing

    @property
    def stopping(self) -> asyncio.Event:
        """Set by ``stop`` once nothing more is pulled: a handler only waiting (not working) should raise
        HandBack."""
        return self._stopping

    async def start(self) -> None:
        """Create (or update) the durable consumer, bind to it and start pulling."""
        self._sub = await bind_pull_consumer(self.nc.jetstream(), self.config.stream, self.config.consumer())
        name = self.config.durable
        self._loops = [asyncio.create_task(self._pull(), name=f"pull-{name}"),
                       asyncio.create_task(self._heartbeat(), name=f"heartbeat-{name}")]

    async def stop(self, timeout_s: float = 20.0) -> None:
        """Stop pulling; running handlers get ``timeout_s`` to finish, then are cancelled and their
        messages handed back at once, for another replica (or this one, restarted)."""
        self._closing = True
        if self._loops:
            pull = self._loops[0]
            if not self._fetching:
                pull.cancel()  # waiting for room or after a failure: nothing in hand
            # A fetch in progress is let finish (a second at most): cancelled, the messages it
            # already received would be lost until ack_wait. What it returns is handled below.
            with contextlib.suppress(asyncio.CancelledError):
                await pull
        # Unbound before any message is handed back, the server drops the open pull request: a handed
        # back message would otherwise be redelivered into it at once, and reach another replica only
        # after ack_wait. Settling needs no subscription (acks go to each message's reply subject).
        await unbind(self._sub)
        self._sub = None
        self._stopping.set()
        await finish_or_cancel(list(self._tasks), timeout_s)
        for loop in self._loops[1:]:
            await _cancel(loop)

    async def _pull(self) -> None:
        assert self._sub is not None
        while not self._closing:
            room = await self._take_room()
            msgs: list[Msg] | None = None
            self._fetching = True
            try:
                msgs = await self._fetch(self._sub, room)
            finally:
                self._fetching = False
                for _ in range(room - len(msgs or ())):
                    self._room.release()
            for msg in msgs or ():
                delivery = Delivery(msg, _delivery_count(msg), self.config)
                task = asyncio.create_task(self._run(delivery), name=f"pulled-{self.config.durable}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if msgs is None and not self._closing:
                if self.nc.is_closed:
                    return  # shutting down: the connection was drained first
                await asyncio.sleep(1.0)

    async def _take_room(self) -> int:
        """Wait for one free slot, then take up to ``batch`` without waiting."""
        await self._room.acquire()
        taken = 1
        while taken < self.config.batch and not self._room.locked():
            await self._room.acquire()
            taken += 1
        return taken

    async def _fetch(self, sub: JetStreamContext.PullSubscription, batch: int) -> list[Msg] | None:
        """The next messages (none after a quiet second); None when the fetch failed."""
        try:
            return await sub.fetch(batch=batch, timeout=1.0)
        except nats.errors.TimeoutError:
            return []
        except (nats.errors.Error, OSError) as exc:
            if not self.nc.is_closed:
                log.warning("pull_fetch_failed", durable=self.config.durable, error=type(exc).__name__)
            return None

    async def _run(self, delivery: Delivery) -> None:
        msg = delivery.msg
        self._held.add(delivery)
        try:
            await self._handler(delivery)
        except HandBack:
            await _settle(msg, "nak")
        except asyncio.CancelledError:
            # Stopped before it finished: another replica (or this one, restarted) takes it now.
            await _settle(msg, "nak")
            raise
        except Exception as exc:
            await self._failed(delivery, exc)
        else:
            await _settle(msg, "ack")
        finally:
            self._held.discard(delivery)
            self._room.release()

    async def _failed(self, delivery: Delivery, exc: Exception) -> None:
        msg = delivery.msg
        reason = exc.detail if isinstance(exc, KashfError) else f"{type(exc).__name__}: {exc}"[:300]
        fields = {"durable": self.config.durable, "subject": msg.subject, "delivery": delivery.count,
                  "reason": reason}
        if delivery.will_retry(exc):
            log.warning("pull_retry", retry_in_s=delivery.retry_delay_s, **fields)
            await _settle(msg, "nak", delivery.retry_delay_s)
            return
        # Poison (it will never succeed) or out of deliveries: retrying would only block the consumer.
        bug = not isinstance(exc, KashfError | ValidationError) and not self.config.is_transient(exc)
        log.error("pull_terminated", data=msg.data[:200].decode(errors="replace"), exc_info=bug, **fields)
        await _settle(msg, "term")

    async def _heartbeat(self) -> None:
        # A held message must not reach ack_wait while its handler works (or waits, debounced).
        interval = self.config.ack_wait_s / 3
        while True:
            await asyncio.sleep(interval)
            for delivery in list(self._held):
                with contextlib.suppress(nats.errors.Error, OSError):
                    await delivery.msg.in_progress()


async def _settle(msg: Msg, action: str, delay: float | None = None) -> None:
    """Ack, nak or term; a lost connection only means the server redelivers after ack_wait."""
    try:
        if action == "ack":
            await msg.ack()
        elif action == "nak":
            await msg.nak(delay=delay)
        else:
            await msg.term()
    except (nats.errors.Error, OSError) as exc:
        log.warning("settle_failed", action=action, error=type(exc).__name__)


def _delivery_count(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except (nats.errors.Error, ValueError, IndexError):
        return 1


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def bind_pull_consumer(
    js: JetStreamContext, stream: str, config: ConsumerConfig
) -> JetStreamContext.PullSubscription:
    """Create or update the durable consumer and bind to it. An existing durable whose settings cannot
    change in place keeps them (logged for operators)."""
    try:
        await js.add_consumer(stream, config)
    except nats.js.errors.BadRequestError as exc:
        log.warning("consumer_config_kept", durable=config.durable_name, error=str(exc))
    return await js.pull_subscribe_bind(durable=config.durable_name, stream=stream)


async def unbind(sub: JetStreamContext.PullSubscription | None) -> None:
    if sub is not None:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


async def finish_or_cancel(tasks: Collection[asyncio.Task[None]], timeout_s: float) -> None:
    """Let ``tasks`` finish for up to ``timeout_s``, then cancel the rest and wait until they are gone."""
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=timeout_s)
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late)
