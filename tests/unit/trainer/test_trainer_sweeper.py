"""Lost training requests: the stall sweeper requeues a dataset left waiting with nothing of its own pending."""

from __future__ import annotations

import json
import uuid
from typing import Any

import nats.js.errors
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.bus import Bus
from shared.schemas.events import TrainRequest
from shared.subjects import EVENTS_STREAM, train_subject
from tests.unit.trainer.helpers import Responder, seed, wait_settled, wait_state
from trainer.consumers import TrainerConsumer
from trainer.embedder import BusEmbedder
from trainer.heads import ObjectStoreHeads
from trainer.service import Trainer
from trainer.sweeper import StallSweeper, create_sweep_metrics


async def mark_waiting(sessions: async_sessionmaker[AsyncSession], dataset_id: int, ago_s: float) -> None:
    """What the gateway's train_dataset writes, ``ago_s`` seconds ago."""
    async with sessions.begin() as s:
        await s.execute(text("UPDATE dataset SET state = 'waiting', train_requested_at = now() - make_interval("
                             "secs => :ago) WHERE id = :id"), {"ago": ago_s, "id": dataset_id})


async def train_requests(bus: Bus, dataset_id: int) -> list[tuple[str, TrainRequest]]:
    """Every TrainRequest in the stream for the dataset, with its Nats-Msg-Id."""
    info = await bus.js.stream_info(EVENTS_STREAM, subjects_filter=train_subject(dataset_id))
    found: list[tuple[str, TrainRequest]] = []
    if not (info.state.subjects or {}).get(train_subject(dataset_id)):
        return found
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await bus.js.get_msg(EVENTS_STREAM, seq)
        except nats.js.errors.NotFoundError:
            continue
        if msg.subject == train_subject(dataset_id):
            headers = msg.headers or {}
            found.append((headers.get("Nats-Msg-Id", ""), TrainRequest.model_validate(json.loads(msg.data or b""))))
    return found


async def set_state(sessions: async_sessionmaker[AsyncSession], dataset_id: int, state: str) -> None:
    async with sessions.begin() as s:
        await s.execute(text("UPDATE dataset SET state = :state WHERE id = :id"), {"state": state, "id": dataset_id})


async def test_a_sweep_requeues_a_lost_request_but_not_a_pending_or_recent_one(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], start_responder: Responder, make_consumer: Any,
) -> None:
    await start_responder()
    lost, _ = await seed(sessions)
    pending, _ = await seed(sessions)
    recent, _ = await seed(sessions)
    orphaned, _ = await seed(sessions)  # left training by a trainer that crashed for good
    refitting, _ = await seed(sessions)  # training, by a trainer holding its lock
    durable = f"trainer-sweep-{uuid.uuid4().hex[:8]}"
    # The trainer's durable consumer exists, but no trainer pulls yet: the pending request stays pending.
    idle = TrainerConsumer(bus, Trainer(sessions, BusEmbedder(bus), ObjectStoreHeads(bus.js)), debounce_s=0.1,
                           max_deliver=5, ack_wait_s=5.0, durable=durable)
    await bus.js.add_consumer(EVENTS_STREAM, idle.worker.config.consumer())
    for dataset_id in (lost, pending):
        await mark_waiting(sessions, dataset_id, ago_s=3600)
    await mark_waiting(sessions, recent, ago_s=1)
    await set_state(sessions, orphaned, "training")
    await set_state(sessions, refitting, "training")
    await bus.publish_event(train_subject(pending), TrainRequest(dataset_id=pending), msg_id=uuid.uuid4().hex)

    registry = CollectorRegistry()
    sweeper = StallSweeper(bus, sessions, durable=durable, stall_s=120, metrics=create_sweep_metrics(registry))
    trainer = Trainer(sessions, BusEmbedder(bus), ObjectStoreHeads(bus.js))
    async with trainer.claim(refitting) as ours:
        assert ours
        assert await sweeper.sweep() == 2
        await set_state(sessions, refitting, "trained")  # its trainer finishes
    for dataset_id in (lost, orphaned):
        [(msg_id, request)] = await train_requests(bus, dataset_id)
        assert request.reason == "requeued" and msg_id.startswith(f"requeue-{dataset_id}-")
    assert len(await train_requests(bus, pending)) == 1  # its own request is still to be delivered
    assert await train_requests(bus, recent) == []  # not yet past the bound
    assert await train_requests(bus, refitting) == []  # a trainer is on it
    assert registry.get_sample_value("kashf_train_requeued_total") == 2
    assert registry.get_sample_value("kashf_train_stalled_datasets") == 3
    # A second pass finds the requeued requests pending: nothing is published twice.
    assert await sweeper.sweep() == 0
    assert len(await train_requests(bus, lost)) == 1

    await make_consumer(durable=durable)
    for dataset_id in (lost, pending, orphaned):
        dataset = await wait_state(sessions, dataset_id, {"trained", "failed"})
        assert dataset.state == "trained" and dataset.head_version == 1
    await wait_settled(bus, durable)
    assert await sweeper.sweep() == 0
    assert registry.get_sample_value("kashf_train_stalled_datasets") == 0


async def test_a_running_trainer_trains_a_dataset_whose_request_never_reached_the_stream(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], start_responder: Responder, make_consumer: Any,
) -> None:
    await start_responder()
    dataset_id, _ = await seed(sessions)
    consumer = await make_consumer()
    registry = CollectorRegistry()
    sweeper = StallSweeper(bus, sessions, durable=consumer.durable, stall_s=1.0,
                           metrics=create_sweep_metrics(registry))
    sweeper.start()
    try:
        await mark_waiting(sessions, dataset_id, ago_s=0)  # the request's outbox row was lost
        dataset = await wait_state(sessions, dataset_id, {"trained", "failed"}, timeout_s=15)
        assert dataset.state == "trained" and dataset.head_version == 1

        # Lost again after its first request was handled (an acked event): requeued, and nothing changed.
        await wait_settled(bus, consumer.durable)
        await mark_waiting(sessions, dataset_id, ago_s=0)
        dataset = await wait_state(sessions, dataset_id, {"trained", "failed"}, timeout_s=15)
        assert dataset.state == "trained" and dataset.head_version == 1
        assert [r.reason for _, r in await train_requests(bus, dataset_id)] == ["requeued", "requeued"]
        assert registry.get_sample_value("kashf_train_requeued_total") == 2
    finally:
        await sweeper.stop()
