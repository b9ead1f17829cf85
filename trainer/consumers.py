"""JetStream transport of the trainer: a durable pull consumer of report and train events.

Per dataset, report events are held (unacked) and debounced into one refit; a train request
refits at once. Messages are acked only after the refit committed, nak'ed with a delay on
transient failures, and terminated when unparseable. A new head is announced once committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
import nats.errors
import sqlalchemy.exc
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from modelkit.metrics import Metrics, default_metrics
from shared import subjects
from shared.bus import Bus, bind_pull_consumer, finish_or_cancel, unbind
from shared.errors import KashfError, Overloaded, Timeout, Unavailable
from shared.schemas.events import DatasetsChanged, ReportEvent, TrainRequest
from trainer.service import Trainer

log = structlog.get_logger(__name__)


async def announce_new_head(bus: Bus, dataset_id: int) -> None:
    """Gateways drop what they cached of the dataset (its head version) at once, not after their TTL."""
    await bus.broadcast(subjects.DATASETS_CHANGED, DatasetsChanged(dataset_ids=[dataset_id]))


def is_transient(exc: BaseException) -> bool:
    """Failures worth retrying later: a model service or the bus away or busy, the database unreachable."""
    if isinstance(exc, KashfError):
        return isinstance(exc, Unavailable | Timeout | Overloaded)
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(
            exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError)
    return isinstance(exc, OSError | TimeoutError | asyncpg.PostgresConnectionError | nats.errors.Error
                      | sqlalchemy.exc.TimeoutError)


@dataclass
class _Pending:
    """Held messages of one dataset and when to refit it."""

    msgs: list[Msg] = field(default_factory=list)
    deadline: float = 0.0
    first_at: float = 0.0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class TrainerConsumer:
    """Pulls events, debounces them per dataset and runs refits (at most ``concurrency`` at once)."""

    def __init__(
        self,
        bus: Bus,
        trainer: Trainer,
        *,
        debounce_s: float,
        max_deliver: int,
        ack_wait_s: float,
        durable: str = subjects.TRAINER_DURABLE,
        concurrency: int = 1,
        retry_delay_s: float = 5.0,
        max_debounce_s: float | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.bus = bus
        self.metrics = metrics or default_metrics()
        self.trainer = trainer
        self.debounce_s = debounce_s
        self.max_debounce_s = max_debounce_s if max_debounce_s is not None else max(10 * debounce_s, 30.0)
        self.max_deliver = max_deliver
        self.ack_wait_s = ack_wait_s
        self.durable = durable
        self.retry_delay_s = retry_delay_s
        self._slots = asyncio.Semaphore(concurrency)
        self._pending: dict[int, _Pending] = {}
        self._in_flight: dict[int, list[Msg]] = {}
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sub: JetStreamContext.PullSubscription | None = None

    @property
    def running(self) -> bool:
        return self._sub is not None and not self._stopping.is_set()

    async def start(self) -> None:
        """Create (or update) the durable consumer, bind to it and start pulling."""
        js = self.bus.js
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            max_ack_pending=10_000,
            deliver_policy=DeliverPolicy.ALL,
            filter_subjects=[f"{subjects.REPORT_EVENT}.*", f"{subjects.TRAIN_EVENT}.*"],
        )
        self._sub = await bind_pull_consumer(js, subjects.EVENTS_STREAM, config)
        self._tasks = [asyncio.create_task(self._pull(), name="trainer-pull"),
                       asyncio.create_task(self._heartbeat(), name="trainer-heartbeat")]

    async def stop(self, timeout_s: float = 20.0) -> None:
        """Stop pulling, hand back held messages, let running refits finish (up to ``timeout_s``)."""
        self._stopping.set()
        for pending in self._pending.values():
            pending.wake.set()
        await finish_or_cancel([p.task for p in self._pending.values() if p.task is not None], timeout_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await unbind(self._sub)
        self._sub = None

    async def _pull(self) -> None:
        assert self._sub is not None
        while not self._stopping.is_set():
            try:
                msgs = await self._sub.fetch(batch=32, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            except (nats.errors.Error, OSError) as exc:
                if self.bus.nc.is_closed:
                    return  # shutting down: the harness drained the connection first
                log.warning("fetch_failed", error=type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                await self._dispatch(msg)

    async def _dispatch(self, msg: Msg) -> None:
        try:
            if msg.subject.startswith(subjects.REPORT_EVENT + "."):
                dataset_id, urgent = ReportEvent.model_validate_json(msg.data).dataset_id, False
            elif msg.subject.startswith(subjects.TRAIN_EVENT + "."):
                dataset_id, urgent = TrainRequest.model_validate_json(msg.data).dataset_id, True
            else:
                raise ValueError(f"unexpected subject {msg.subject}")
        except (ValidationError, ValueError) as exc:
            # A poison message never parses: retrying it would only block the consumer.
            log.error("poison_event_terminated", subject=msg.subject, error=str(exc)[:300],
                      data=msg.data[:200].decode(errors="replace"))
            await msg.term()
            return
        now = time.monotonic()
        pending = self._pending.get(dataset_id)
        if pending is None:
            pending = self._pending[dataset_id] = _Pending()
        fresh = not pending.msgs
        if fresh:
            pending.first_at = now
        pending.msgs.append(msg)
        if urgent:
            pending.deadline = now
        elif fresh or pending.deadline > now:
            # A burst of reports trains once, but the refit is never pushed past max_debounce_s.
            pending.deadline = min(now + self.debounce_s, pending.first_at + self.max_debounce_s)
        pending.wake.set()
        if pending.task is None or pending.task.done():
            pending.task = asyncio.create_task(self._worker(dataset_id, pending), name=f"refit-{dataset_id}")

    async def _worker(self, dataset_id: int, pending: _Pending) -> None:
        while True:
            while not self._stopping.is_set():
                left = pending.deadline - time.monotonic()
                if left <= 0:
                    break
                pending.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pending.wake.wait(), left)
            if self._stopping.is_set():
                await self._hand_back(pending.msgs)
                pending.msgs = []
                self._pending.pop(dataset_id, None)
                return
            batch, pending.msgs = pending.msgs, []
            self._in_flight[dataset_id] = batch
            try:
                async with self._slots:
                    await self._refit(dataset_id, batch)
            finally:
                self._in_flight.pop(dataset_id, None)
            if not pending.msgs:
                self._pending.pop(dataset_id, None)
                return

    async def _refit(self, dataset_id: int, batch: list[Msg]) -> None:
        started = time.perf_counter()
        try:
            outcome = await self.trainer.refit(dataset_id)
        except Exception as exc:
            self.metrics.training_runs.labels(outcome="retry" if is_transient(exc) else "error").inc()
            await self._failed(dataset_id, batch, exc)
            return
        self.metrics.training_runs.labels(outcome=outcome.state).inc()
        self.metrics.training_seconds.observe(time.perf_counter() - started)
        if outcome.state == "missing":
            log.info("dataset_missing_acked", dataset_id=dataset_id, events=len(batch))
        await _settle(batch, "ack")
        if outcome.state == "trained":
            await announce_new_head(self.bus, dataset_id)

    async def _failed(self, dataset_id: int, batch: list[Msg], exc: Exception) -> None:
        deliveries = max(_deliveries(m) for m in batch)
        reason = exc.detail if isinstance(exc, KashfError) else f"{type(exc).__name__}: {exc}"[:500]
        if is_transient(exc) and deliveries < self.max_deliver:
            delay = self.retry_delay_s * 2 ** (deliveries - 1)
            log.warning("refit_retry", dataset_id=dataset_id, reason=reason, delivery=deliveries, retry_in_s=delay)
            with contextlib.suppress(Exception):
                await self.trainer.mark(dataset_id, "waiting", f"retrying: {reason}")
            await _settle(batch, "nak", delay)
            return
        log.error("refit_failed", dataset_id=dataset_id, reason=reason, delivery=deliveries,
                  exc_info=not is_transient(exc))
        try:
            await self.trainer.mark(dataset_id, "failed", reason)
        except Exception:
            # The state could not be written (database away): let the server redeliver later.
            log.warning("refit_failure_unrecorded", dataset_id=dataset_id)
            return
        await _settle(batch, "ack")

    async def _hand_back(self, msgs: Sequence[Msg]) -> None:
        # On shutdown, held messages go back at once so another replica can take them.
        await _settle(msgs, "nak")

    async def _heartbeat(self) -> None:
        # Held and in-flight messages must not reach ack_wait while debounced or being refitted.
        interval = max(0.5, self.ack_wait_s / 3)
        while True:
            await asyncio.sleep(interval)
            held = [m for p in self._pending.values() for m in p.msgs]
            held += [m for batch in self._in_flight.values() for m in batch]
            for msg in held:
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()


async def _settle(msgs: Sequence[Msg], action: str, delay: float | None = None) -> None:
    """Ack or nak each message; a lost connection only means the server redelivers later."""
    for msg in msgs:
        try:
            if action == "ack":
                await msg.ack()
            else:
                await msg.nak(delay=delay)
        except (nats.errors.Error, OSError) as exc:
            log.warning("settle_failed", action=action, error=type(exc).__name__)


def _deliveries(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1
