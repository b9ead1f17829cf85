"""Lost training requests: a dataset left ``waiting`` past a bound (or ``training`` with no trainer on it) and
no event of its own still to be handled by the trainer's durable consumer gets a TrainRequest again."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from dataclasses import dataclass

import nats.js.errors
import structlog
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import subjects
from shared.bus import Bus
from shared.schemas.events import TrainRequest
from trainer import repository

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SweepMetrics:
    requeued: Counter
    stalled: Gauge


def create_sweep_metrics(registry: CollectorRegistry) -> SweepMetrics:
    return SweepMetrics(
        requeued=Counter("kashf_train_requeued", "Training requests published again by the stall sweeper",
                         registry=registry),
        stalled=Gauge("kashf_train_stalled_datasets",
                      "Datasets waiting past KASHF_TRAIN_STALL_S, or left training by no trainer", registry=registry),
    )


@functools.cache
def default_sweep_metrics() -> SweepMetrics:
    return create_sweep_metrics(REGISTRY)


class StallSweeper:
    """Every ``stall_s / 4`` compares the stalled datasets with the consumer's progress (reason "requeued")."""

    def __init__(self, bus: Bus, sessions: async_sessionmaker[AsyncSession], *, durable: str, stall_s: float,
                 metrics: SweepMetrics | None = None) -> None:
        self.bus = bus
        self.sessions = sessions
        self.durable = durable
        self.stall_s = stall_s
        self.metrics = metrics or default_sweep_metrics()
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> int:
        """One pass; returns how many requests it published again."""
        async with self.sessions() as session:
            # One replica sweeps at a time (the lock lasts this transaction), so two never requeue one dataset.
            if not await repository.try_lock(session, repository.SWEEP_LOCK):
                return 0
            stalled = await repository.stalled_datasets(session, self.stall_s)
            self.metrics.stalled.set(len(stalled))
            if not stalled:
                return 0
            info = await self.bus.js.consumer_info(subjects.EVENTS_STREAM, self.durable)
            # Every event at or below the ack floor was acked or terminated; one above it is still to be
            # delivered, held by a trainer, or waiting for a retry.
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
            requeued = 0
            for dataset_id in stalled:
                if await self._last_event(dataset_id) > floor:
                    continue
                request = TrainRequest(dataset_id=dataset_id, reason="requeued", request_id=uuid.uuid4().hex)
                await self.bus.publish_event(subjects.train_subject(dataset_id), request,
                                             msg_id=f"requeue-{dataset_id}-{uuid.uuid4().hex}")
                log.warning("train_requeued", dataset_id=dataset_id, stall_s=self.stall_s)
                self.metrics.requeued.inc()
                requeued += 1
            return requeued

    async def _last_event(self, dataset_id: int) -> int:
        """The stream sequence of the dataset's latest report or train event; 0 when it has none."""
        last = 0
        for subject in (subjects.train_subject(dataset_id), subjects.report_subject(dataset_id)):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                msg = await self.bus.js.get_last_msg(subjects.EVENTS_STREAM, subject)
                last = max(last, msg.seq or 0)
        return last

    def start(self) -> None:
        self._task = asyncio.create_task(self._sweep_forever(), name="stall-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.stall_s / 4)
            try:
                await self.sweep()
            except Exception as exc:  # the database or the bus away: the next pass tries again
                log.warning("stall_sweep_failed", error=f"{type(exc).__name__}: {exc}"[:300])
