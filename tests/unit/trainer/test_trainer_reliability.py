"""Issue 12's trainer gaps: a crashed trainer's work comes back within ack_wait while a live one's long refit
keeps its events (heartbeat); bursts and late events coalesce; a refit that would change nothing fits nothing."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelkit.heads import Head, load_head
from modelkit.metrics import create_metrics
from shared.bus import Bus
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.models import DataItem, Dataset, HeadVersion, Report
from shared.schemas.events import ReportEvent, TrainRequest
from shared.subjects import EVENTS_STREAM, report_subject, train_subject
from tests.unit.trainer.helpers import MODEL_ID, Responder, seed, wait_settled, wait_state
from trainer.consumers import TrainerConsumer
from trainer.embedder import BusEmbedder
from trainer.fitting import FitConfig
from trainer.heads import ObjectStoreHeads
from trainer.service import Trainer


class GatedHeads(ObjectStoreHeads):
    """The real store, but each ``put`` (the end of a refit) waits until the test opens the gate."""

    def __init__(self, bus: Bus) -> None:
        super().__init__(bus.js)
        self.reached = asyncio.Event()
        self.gate = asyncio.Event()

    async def put(self, dataset_id: int, head: Head) -> str:
        self.reached.set()
        await self.gate.wait()
        return await super().put(dataset_id, head)


async def versions(sessions: async_sessionmaker[AsyncSession], dataset_id: int) -> list[int]:
    async with sessions() as s:
        return sorted(await s.scalars(select(HeadVersion.version).where(HeadVersion.dataset_id == dataset_id)))


async def add_report(sessions: async_sessionmaker[AsyncSession], dataset_id: int, tag_id: int, text: str) -> int:
    """A new item reported positive for ``tag_id``, committed (as the gateway does before its event)."""
    async with sessions.begin() as s:
        item = DataItem(dataset_id=dataset_id, kind="text", content=text,
                        content_hash=hashlib.sha256(text.encode()).hexdigest())
        s.add(item)
        await s.flush()
        report = Report(dataset_id=dataset_id, item_id=item.id, tag_id=tag_id, positive=True)
        s.add(report)
        await s.flush()
        return report.id


async def publish_report(bus: Bus, dataset_id: int, tag_id: int, report_id: int) -> None:
    event = ReportEvent(dataset_id=dataset_id, item_id=report_id, tag_id=tag_id, positive=True, report_id=report_id)
    await bus.publish_event(report_subject(dataset_id), event, msg_id=uuid.uuid4().hex)


async def request_training(bus: Bus, dataset_id: int, reason: Any = "api") -> None:
    await bus.publish_event(train_subject(dataset_id), TrainRequest(dataset_id=dataset_id, reason=reason),
                            msg_id=uuid.uuid4().hex)


async def wait_held(bus: Bus, durable: str, n: int) -> None:
    """Until the consumer holds ``n`` events (delivered, not yet acked)."""
    deadline = asyncio.get_running_loop().time() + 15
    while (await bus.js.consumer_info(EVENTS_STREAM, durable)).num_ack_pending != n:
        assert asyncio.get_running_loop().time() < deadline, f"the consumer never held {n} events"
        await asyncio.sleep(0.05)


def runs(registry: CollectorRegistry, outcome: str) -> float:
    return registry.get_sample_value("kashf_training_runs_total", {"outcome": outcome}) or 0.0


async def test_a_crashed_trainers_refit_is_taken_over_within_ack_wait(
    nats_url: str, clean_db: str, bus: Bus, sessions: async_sessionmaker[AsyncSession],
    start_responder: Responder, make_consumer: Any,
) -> None:
    ack_wait = 3.0
    await start_responder()
    dataset_id, _ = await seed(sessions)
    durable = f"trainer-crash-{uuid.uuid4().hex[:8]}"
    # The doomed replica has its own connections, as a process of its own would.
    doomed = await Bus.connect(nats_url, "doomed-trainer")
    doomed_engine = make_engine(clean_db, pool_size=2)
    hanging = GatedHeads(doomed)
    first = TrainerConsumer(
        doomed, Trainer(make_sessionmaker(doomed_engine), BusEmbedder(doomed), hanging, config=FitConfig(cv_folds=3)),
        debounce_s=0.1, max_deliver=5, ack_wait_s=ack_wait, durable=durable,
    )
    await first.start()
    await request_training(bus, dataset_id)
    await asyncio.wait_for(hanging.reached.wait(), 20)
    # The crash: its connections die with the event unacked, so nothing can be handed back.
    await doomed.nc.close()
    killed_at = asyncio.get_running_loop().time()
    await first.stop(0.1)
    await doomed_engine.dispose()
    async with sessions() as s:
        crashed = await s.get(Dataset, dataset_id)
        assert crashed is not None and crashed.state == "training"

    await make_consumer(durable=durable, ack_wait_s=ack_wait)
    dataset = await wait_state(sessions, dataset_id, {"trained", "failed"})
    took = asyncio.get_running_loop().time() - killed_at
    assert dataset.state == "trained" and dataset.head_version == 1
    # The server redelivered the event after ack_wait (no nak could reach it); then one fit.
    assert took < ack_wait + 4.0, f"trained {took:.1f} s after the crash"


async def test_a_long_refit_keeps_its_events_while_another_replica_is_idle(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], start_responder: Responder, make_consumer: Any,
) -> None:
    ack_wait = 1.5
    await start_responder()
    dataset_id, _ = await seed(sessions)
    durable = f"trainer-long-{uuid.uuid4().hex[:8]}"

    class SlowHeads(ObjectStoreHeads):
        reached = asyncio.Event()

        async def put(self, dataset_id: int, head: Head) -> str:
            self.reached.set()
            await asyncio.sleep(4 * ack_wait)  # a refit four times longer than ack_wait
            return await super().put(dataset_id, head)

    slow = SlowHeads(bus.js)
    await make_consumer(durable=durable, ack_wait_s=ack_wait, heads=slow)
    await request_training(bus, dataset_id)
    await asyncio.wait_for(slow.reached.wait(), 20)
    idle = CollectorRegistry()
    await make_consumer(durable=durable, ack_wait_s=ack_wait, metrics=create_metrics(idle))

    # in_progress() keeps the event with the live replica: the server never redelivers it meanwhile.
    redelivered = 0
    while (await bus.js.consumer_info(EVENTS_STREAM, durable)).num_ack_pending:
        redelivered = max(redelivered, (await bus.js.consumer_info(EVENTS_STREAM, durable)).num_redelivered or 0)
        await asyncio.sleep(0.1)
    assert redelivered == 0
    dataset = await wait_state(sessions, dataset_id, {"trained", "failed"})
    assert dataset.state == "trained" and await versions(sessions, dataset_id) == [1]
    assert idle.get_sample_value("kashf_training_runs_total", {"outcome": "trained"}) is None
    assert idle.get_sample_value("kashf_training_runs_total", {"outcome": "unchanged"}) is None


async def test_events_during_a_refit_make_one_follow_up_which_fits_only_if_something_changed(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], start_responder: Responder, make_consumer: Any,
) -> None:
    await start_responder()
    dataset_id, tags = await seed(sessions)
    heads = GatedHeads(bus)
    registry = CollectorRegistry()
    consumer = await make_consumer(heads=heads, metrics=create_metrics(registry))

    # Late events (an outbox republishing, a slow gateway) of reports the running refit already read.
    await request_training(bus, dataset_id)
    await asyncio.wait_for(heads.reached.wait(), 20)
    async with sessions() as s:
        old = list(await s.scalars(select(Report.id).where(Report.dataset_id == dataset_id)))
    for report_id in old[:5]:
        await publish_report(bus, dataset_id, tags["sport"], report_id)
    await wait_held(bus, consumer.durable, 6)
    heads.reached.clear()
    heads.gate.set()
    await wait_settled(bus, consumer.durable)
    assert await versions(sessions, dataset_id) == [1]
    assert (runs(registry, "trained"), runs(registry, "unchanged")) == (1, 1)

    # New reports while a refit runs: one follow-up for all of them, which fits them.
    heads.gate.clear()
    await publish_report(bus, dataset_id, tags["sport"], await add_report(sessions, dataset_id, tags["sport"],
                                                                          "sport a first new one"))
    await asyncio.wait_for(heads.reached.wait(), 20)
    for n in range(5):
        report_id = await add_report(sessions, dataset_id, tags["food"], f"food new dish {n}")
        await publish_report(bus, dataset_id, tags["food"], report_id)
    await wait_held(bus, consumer.durable, 6)
    heads.gate.set()
    await wait_settled(bus, consumer.durable)
    assert await versions(sessions, dataset_id) == [1, 2, 3]
    async with sessions() as s:
        last = (await s.scalars(select(HeadVersion).where(HeadVersion.dataset_id == dataset_id,
                                                          HeadVersion.version == 3))).one()
    assert last.report_count == 18 + 6
    assert (runs(registry, "trained"), runs(registry, "unchanged")) == (3, 1)


async def test_a_dataset_another_replica_is_refitting_waits_for_it_and_then_fits_nothing(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], start_responder: Responder, make_consumer: Any,
) -> None:
    await start_responder()
    dataset_id, _ = await seed(sessions)
    heads = GatedHeads(bus)
    first = await make_consumer(heads=heads)
    await request_training(bus, dataset_id)
    await asyncio.wait_for(heads.reached.wait(), 20)
    # A second replica gets the same request while the first is mid-refit (here through a durable of its
    # own, which sees the stream from the start, so the request surely reaches it).
    registry = CollectorRegistry()
    second = await make_consumer(metrics=create_metrics(registry))
    await wait_held(bus, second.durable, 1)
    heads.gate.set()
    await wait_settled(bus, first.durable)
    await wait_settled(bus, second.durable)
    assert await versions(sessions, dataset_id) == [1]
    assert (runs(registry, "trained"), runs(registry, "unchanged")) == (0, 1)


async def test_a_burst_across_two_replicas_fits_at_most_twice_and_misses_nothing(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], start_responder: Responder, make_consumer: Any,
) -> None:
    await start_responder()
    dataset_id, tags = await seed(sessions)
    durable = f"trainer-burst-{uuid.uuid4().hex[:8]}"
    registries = [CollectorRegistry(), CollectorRegistry()]
    for registry in registries:
        await make_consumer(durable=durable, metrics=create_metrics(registry))
    for n in range(20):
        report_id = await add_report(sessions, dataset_id, tags["sport"], f"sport burst report {n}")
        await publish_report(bus, dataset_id, tags["sport"], report_id)
    await wait_settled(bus, durable)
    fitted = await versions(sessions, dataset_id)
    assert 1 <= len(fitted) <= 2
    assert sum(runs(r, "trained") for r in registries) == len(fitted)
    async with sessions() as s:
        dataset = await s.get(Dataset, dataset_id)
        assert dataset is not None and dataset.state == "trained"
        head = (await s.scalars(select(HeadVersion).where(HeadVersion.dataset_id == dataset_id,
                                                          HeadVersion.version == dataset.head_version))).one()
    assert head.report_count == 18 + 20


async def test_a_repeated_train_request_fits_nothing_but_an_operators_retrain_does(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], start_responder: Responder, make_consumer: Any,
) -> None:
    await start_responder()
    dataset_id, _ = await seed(sessions)
    registry = CollectorRegistry()
    consumer = await make_consumer(metrics=create_metrics(registry))
    await request_training(bus, dataset_id)
    await wait_settled(bus, consumer.durable)
    assert await versions(sessions, dataset_id) == [1]

    async with sessions.begin() as s:  # what the gateway's train_dataset does before its request
        waiting = await s.get(Dataset, dataset_id)
        assert waiting is not None
        waiting.state = "waiting"
    await request_training(bus, dataset_id)
    dataset = await wait_state(sessions, dataset_id, {"trained", "failed"})
    await wait_settled(bus, consumer.durable)
    assert (dataset.head_version, await versions(sessions, dataset_id)) == (1, [1])
    assert (runs(registry, "trained"), runs(registry, "unchanged")) == (1, 1)

    await request_training(bus, dataset_id, reason="retrain")
    await wait_settled(bus, consumer.durable)
    assert await versions(sessions, dataset_id) == [1, 2]
    assert (await load_head(bus.js, dataset_id, 2)).model_id == MODEL_ID
