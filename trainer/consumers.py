"""JetStream transport of the trainer: report and train events through ``shared.bus.pull.PullWorker``.

Events are debounced per dataset into one refit (train requests at once); its outcome settles them all.
Events arriving during a refit make one batch for the next; a dataset another replica refits is waited for.
The webhook deliveries a refit committed are published once it is done (``trainer.webhook_events``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
import sqlalchemy.exc
import structlog
from nats.aio.msg import Msg

from modelkit.metrics import Metrics, default_metrics
from shared import subjects
from shared.bus import Bus, pull
from shared.bus.pull import Delivery, HandBack, PullConfig, PullWorker, finish_or_cancel
from shared.db.faults import connection_lost, server_unavailable
from shared.errors import KashfError
from shared.schemas.events import DatasetsChanged, ReportEvent, TrainRequest
from trainer import webhook_events
from trainer.fairslots import FairSlots
from trainer.service import Trainer
from trainer.webhook_repository import Queued

log = structlog.get_logger(__name__)


def is_transient(exc: BaseException) -> bool:
    """The bus policy's transient failures, and the database unreachable."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        return connection_lost(exc)
    if server_unavailable(exc):  # asyncpg's own error, unwrapped
        return True
    return pull.is_transient(exc) or isinstance(exc, asyncpg.PostgresConnectionError | sqlalchemy.exc.TimeoutError)


async def announce_new_head(bus: Bus, dataset_id: int) -> None:
    """Gateways drop what they cached of the dataset (its head version) at once, not after their TTL."""
    await bus.broadcast(subjects.DATASETS_CHANGED, DatasetsChanged(dataset_ids=[dataset_id]))


def _parse(msg: Msg) -> tuple[int, bool, bool]:
    """The dataset id, whether the event asks for a refit at once (tag title changes wait like reports), and
    whether even with nothing changed and past the promotion gate (an operator's retrain, train_dataset with
    force); raises on a poison message."""
    if msg.subject.startswith(subjects.REPORT_EVENT + "."):
        return ReportEvent.model_validate_json(msg.data).dataset_id, False, False
    if msg.subject.startswith(subjects.TRAIN_EVENT + "."):
        request = TrainRequest.model_validate_json(msg.data)
        return request.dataset_id, request.reason != "titles", request.reason == "retrain" or request.force
    raise ValueError(f"unexpected subject {msg.subject}")


def _outcome() -> asyncio.Future[None]:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    # Retrieved even when every handler waiting on it was cancelled (stop), so nothing logs it as lost.
    done.add_done_callback(lambda f: f.cancelled() or f.exception())
    return done


@dataclass(eq=False)
class _Batch:
    """Events of one dataset answered by the same refit: each event's handler awaits ``done``."""

    first_at: float
    deadline: float
    force: bool = False
    deliveries: list[Delivery] = field(default_factory=list)
    done: asyncio.Future[None] = field(default_factory=_outcome)


@dataclass(eq=False)
class _Dataset:
    """The batch still collecting events, and the task refitting this dataset's batches one after another."""

    waiting: _Batch | None = None
    account: int | None = None  # looked up once, for the fair share of refit slots
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


def _settle_failed(dataset: _Dataset, batch: _Batch, exc: Exception) -> None:
    if dataset.waiting is batch:
        dataset.waiting = None
    if not batch.done.done():
        batch.done.set_exception(exc)


class TrainerConsumer:
    """Debounces events per dataset and runs refits (at most ``concurrency`` at once, one per dataset); the
    slots go round the accounts with datasets due (``trainer.fairslots``), so no account's burst starves another."""

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
        max_held: int = 1000,
        busy_retry_s: float = 1.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.bus = bus
        self.trainer = trainer
        self.metrics = metrics or default_metrics()
        self.debounce_s = debounce_s
        self.max_debounce_s = max_debounce_s if max_debounce_s is not None else max(10 * debounce_s, 30.0)
        self.durable = durable
        self.busy_retry_s = busy_retry_s
        config = PullConfig(
            stream=subjects.EVENTS_STREAM, durable=durable,
            subjects=(f"{subjects.REPORT_EVENT}.*", f"{subjects.TRAIN_EVENT}.*"),
            ack_wait_s=ack_wait_s, max_deliver=max_deliver, retry_delay_s=retry_delay_s,
            batch=32, concurrency=max_held, max_ack_pending=10_000, is_transient=is_transient,
        )
        self.worker = PullWorker(bus.nc, config, self._handle)
        self._slots = FairSlots(concurrency)
        self._datasets: dict[int, _Dataset] = {}

    @property
    def running(self) -> bool:
        return self.worker.running

    async def start(self) -> None:
        await self.worker.start()

    async def stop(self, timeout_s: float = 20.0) -> None:
        """Hand back held events at once; let running refits finish (up to ``timeout_s``), then cancel them."""
        waking = asyncio.create_task(self._wake_when_stopping())
        await self.worker.stop(timeout_s)
        await finish_or_cancel([waking, *(d.task for d in self._datasets.values() if d.task is not None)], 0.0)

    async def _wake_when_stopping(self) -> None:
        # The worker says when held events may go back: only once it stopped pulling, or the server
        # would redeliver them into its last pull request.
        await self.worker.stopping.wait()
        for dataset in self._datasets.values():
            dataset.wake.set()

    async def _handle(self, delivery: Delivery) -> None:
        dataset_id, urgent, force = _parse(delivery.msg)
        now = time.monotonic()
        dataset = self._datasets.setdefault(dataset_id, _Dataset())
        batch = dataset.waiting
        if batch is None:
            batch = dataset.waiting = _Batch(first_at=now, deadline=now + min(self.debounce_s, self.max_debounce_s))
        elif batch.deadline > now:
            # A burst of reports trains once, but the refit is never pushed past max_debounce_s.
            batch.deadline = min(now + self.debounce_s, batch.first_at + self.max_debounce_s)
        if urgent:
            batch.deadline = now
        batch.force = batch.force or force
        batch.deliveries.append(delivery)
        dataset.wake.set()
        if dataset.task is None or dataset.task.done():
            dataset.task = asyncio.create_task(self._run(dataset_id, dataset), name=f"refit-{dataset_id}")
        await asyncio.shield(batch.done)

    async def _run(self, dataset_id: int, dataset: _Dataset) -> None:
        while (batch := dataset.waiting) is not None:
            await self._until_due(dataset, batch)
            try:
                if self.worker.stopping.is_set():
                    raise HandBack()  # shutting down: the held events go back at once
                if dataset.account is None:
                    dataset.account = await self.trainer.account_of(dataset_id)
                async with self._slots.hold(dataset.account), self.trainer.claim(dataset_id) as ours:
                    if not ours:
                        # Another replica refits this dataset: the batch (and events joining it) waits for
                        # it, its events held, and then most often finds nothing left to change.
                        log.debug("refit_busy_elsewhere", dataset_id=dataset_id, events=len(batch.deliveries))
                        batch.deadline = time.monotonic() + self.busy_retry_s
                        continue
                    dataset.waiting = None  # events from now on join the next batch
                    await self._refit(dataset_id, batch)
            except Exception as exc:
                _settle_failed(dataset, batch, exc)
            except asyncio.CancelledError:
                _settle_failed(dataset, batch, HandBack())  # cancelled mid-refit: its events go back at once
                raise
        self._datasets.pop(dataset_id, None)

    async def _until_due(self, dataset: _Dataset, batch: _Batch) -> None:
        while not self.worker.stopping.is_set():
            left = batch.deadline - time.monotonic()
            if left <= 0:
                return
            dataset.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(dataset.wake.wait(), left)

    async def _refit(self, dataset_id: int, batch: _Batch) -> None:
        started = time.perf_counter()
        try:
            outcome = await self.trainer.refit(dataset_id, force=batch.force)
        except Exception as exc:
            batch.done.set_exception(await self._failed(dataset_id, batch, exc))
            return
        self.metrics.training_runs.labels(outcome=outcome.state).inc()
        if outcome.state != "unchanged":
            self.metrics.training_seconds.observe(time.perf_counter() - started)
        if outcome.state == "missing":
            log.info("dataset_missing_acked", dataset_id=dataset_id, events=len(batch.deliveries))
        batch.done.set_result(None)
        if outcome.state == "trained":
            await announce_new_head(self.bus, dataset_id)
        await self._publish(outcome.webhooks)

    async def _publish(self, queued: Sequence[Queued]) -> None:
        """The committed training event's deliveries: training.finished for a new version (live, or held by
        the promotion gate), training.failed for a dataset that cannot be trained. A message that does not go
        (or a crash before this) leaves its row pending for the webhook worker's sweep."""
        if queued:
            await webhook_events.publish(self.bus, queued)

    async def _failed(self, dataset_id: int, batch: _Batch, exc: Exception) -> Exception:
        """Record why on the dataset; the exception the events' handlers raise (the worker settles them)."""
        retry = any(d.will_retry(exc) for d in batch.deliveries)
        self.metrics.training_runs.labels(outcome="retry" if retry else "error").inc()
        reason = exc.detail if isinstance(exc, KashfError) else f"{type(exc).__name__}: {exc}"[:500]
        deliveries = max(d.count for d in batch.deliveries)
        if retry:
            log.warning("refit_retry", dataset_id=dataset_id, reason=reason, delivery=deliveries)
        else:
            log.error("refit_failed", dataset_id=dataset_id, reason=reason, delivery=deliveries,
                      exc_info=not is_transient(exc))
        try:
            queued = await self.trainer.mark(dataset_id, "waiting" if retry else "failed",
                                             f"retrying: {reason}" if retry else reason)
        except Exception as mark_exc:
            if not retry:
                # The failure could not be recorded (database away): the worker's policy for that
                # error applies instead, so the events come back rather than vanish unrecorded.
                log.warning("refit_failure_unrecorded", dataset_id=dataset_id)
                return mark_exc
        else:
            await self._publish(queued)
        return exc
