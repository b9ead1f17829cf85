"""Webhook deliveries end to end: rows in real Postgres, messages in real JetStream, POSTs to a local receiver."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelkit.fetch import policy_from_settings
from shared import subjects
from shared.bus import Bus
from shared.db.models import Dataset, Report, Webhook, WebhookDelivery
from shared.schemas.events import TrainRequest
from tests.unit.trainer.helpers import SECRET, Responder, add_webhook, deliveries, seed, until, wait_state
from tests.webhookreceiver import receiver, verify
from trainer.webhook_events import WebhookDue, publish, queue_training_event
from trainer.webhooks import RetryPolicy, WebhookConfig, WebhookMetrics, WebhookWorker, create_webhook_metrics

EVALUATION = {"recall": 91.7, "precision": 88.0, "f1": 89.8}


def readme_verified() -> Callable[[str, bytes], bool]:
    """The README's receiver example, its ``verified`` function keyed with this test's secret."""
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme[readme.index("### Webhooks"):]
    start = section.index("```python\n") + len("```python\n")
    code = section[start:section.index("```", start)]
    namespace: dict[str, Any] = {}
    exec(code[:code.index("HTTPServer((")], namespace)  # everything but serving
    namespace["SECRET"] = SECRET.encode()
    return namespace["verified"]  # type: ignore[no-any-return]


@pytest.fixture
async def make_worker(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], webhook_stream: None
) -> AsyncIterator[Callable[..., Awaitable[tuple[WebhookWorker, WebhookMetrics]]]]:
    """``await make_worker(allow_hosts="127.0.0.1", retry_for_s=...)``: a started worker with fast retries."""
    workers: list[WebhookWorker] = []

    async def make(allow_hosts: str = "127.0.0.1", **retry: float) -> tuple[WebhookWorker, WebhookMetrics]:
        metrics = create_webhook_metrics(CollectorRegistry())
        policy = RetryPolicy(**({"delay_s": 0.3, "max_delay_s": 1.0, "retry_for_s": 60.0} | retry))
        config = WebhookConfig(policy, timeout_s=5.0, sweep_s=30.0, ack_wait_s=5.0,
                               durable=f"webhooks-test-{uuid.uuid4().hex[:8]}")
        worker = WebhookWorker(bus, sessions, policy_from_settings(allow_hosts, "80,443"), config, metrics=metrics)
        await worker.start()
        workers.append(worker)
        return worker, metrics

    yield make
    for worker in workers:
        await worker.stop(5)


async def emit(sessions: async_sessionmaker[AsyncSession], bus: Bus, dataset_id: int, event: str, *, state: str,
               version: int | None, evaluation: dict[str, Any] | None) -> int:
    """What the trainer does for an event: its rows in a transaction, published once committed; how many."""
    async with sessions.begin() as s:
        queued = await queue_training_event(s, dataset_id, event, state=state, version=version,
                                            evaluation=evaluation)
    await publish(bus, queued)
    return len(queued)


def counted(metrics: WebhookMetrics, outcome: str) -> float:
    return float(metrics.deliveries.labels(outcome=outcome)._value.get())


async def test_a_receiver_failing_twice_gets_exactly_one_accepted_delivery_signed(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], make_worker: Any
) -> None:
    with receiver([500, 503, 200]) as box:
        dataset_id, hook_id = await add_webhook(sessions, box.url)
        _, metrics = await make_worker()
        queued = await emit(sessions, bus, dataset_id, "training.finished", state="live", version=3,
                            evaluation=EVALUATION)
        assert queued == 1

        async def delivered() -> bool:
            rows = await deliveries(sessions)
            return rows[0].state == "delivered"

        await until(delivered)
        # A copy of the message (a redelivery, the sweep) finds it delivered: nothing is sent again.
        await bus.publish_event(subjects.WEBHOOKS_SUBJECT, WebhookDue(delivery_id=1), msg_id=uuid.uuid4().hex)
        await asyncio.sleep(1.5)

        assert box.answered == [500, 503, 200]
        [row] = await deliveries(sessions)
        assert (row.state, row.attempts, row.last_status, row.last_error) == ("delivered", 3, 200, None)
        assert row.webhook_id == hook_id
        readme = readme_verified()
        for headers, body in box.requests:
            assert verify(SECRET, headers["kashf-signature"], body)
            assert not verify("whsec_another", headers["kashf-signature"], body)
            assert readme(headers["kashf-signature"], body)
            assert not readme(headers["kashf-signature"], body.replace(b'"live"', b'"held"'))
            assert headers["content-type"] == "application/json"
            assert headers["user-agent"].startswith("Kashf-Webhooks/")
        payload = json.loads(box.requests[-1][1])
        assert list(payload) == ["event", "dataset", "version", "state", "evaluation", "at"]
        assert payload | {"at": None} == {"event": "training.finished", "dataset": "news", "version": 3,
                                          "state": "live", "evaluation": EVALUATION, "at": None}
        assert abs(time.time() - time.mktime(time.strptime(payload["at"][:19], "%Y-%m-%dT%H:%M:%S"))
                   + time.timezone) < 60
        assert box.requests[-1][1] == json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        assert (counted(metrics, "delivered"), counted(metrics, "retry"), counted(metrics, "failed")) == (1, 2, 0)


async def test_a_private_address_the_policy_refuses_never_receives_a_request(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], make_worker: Any
) -> None:
    with receiver([200]) as box:
        # The same receiver, by address and by a name that resolves to it; this worker's allowlist is empty.
        dataset_id, _ = await add_webhook(sessions, box.url)
        async with sessions.begin() as s:
            account_id = (await s.get(Dataset, dataset_id)).account_id  # type: ignore[union-attr]
            s.add(Webhook(account_id=account_id, dataset_id=None, url=f"http://localhost:{box.port}/hook",
                          secret=SECRET, events=["training.failed"]))
        _, metrics = await make_worker(allow_hosts="")
        assert await emit(sessions, bus, dataset_id, "training.failed", state="failed", version=None,
                          evaluation=None) == 2

        async def settled() -> list[WebhookDelivery] | None:
            rows = await deliveries(sessions)
            return rows if all(r.state != "pending" for r in rows) else None

        rows = await until(settled)
        await asyncio.sleep(0.5)
        assert box.requests == []
        assert [r.state for r in rows] == ["failed", "failed"]
        assert "forbidden address" in (rows[0].last_error or "") and "127.0.0.1" in (rows[0].last_error or "")
        assert "resolves to a forbidden address" in (rows[1].last_error or "")
        assert [r.attempts for r in rows] == [1, 1] and counted(metrics, "failed") == 2


async def test_a_redirect_is_not_followed_and_counts_as_a_failed_attempt(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], make_worker: Any
) -> None:
    with receiver([200]) as target, receiver([302], location=None) as hook:
        hook.location = target.url  # where a receiver would send the trainer, e.g. an internal address
        dataset_id, _ = await add_webhook(sessions, hook.url)
        _, metrics = await make_worker(delay_s=5.0)
        await emit(sessions, bus, dataset_id, "training.finished", state="live", version=1,
                   evaluation=None)
        await until(lambda: asyncio.sleep(0, counted(metrics, "retry") == 1))
        [row] = await deliveries(sessions)
        assert (row.state, row.attempts, row.last_status, row.last_error) == ("pending", 1, 302, "http status 302")
        assert len(hook.requests) == 1 and target.requests == []


async def test_only_subscribed_webhooks_of_the_datasets_account_get_the_event(
    bus: Bus, sessions: async_sessionmaker[AsyncSession]
) -> None:
    dataset_id, mine = await add_webhook(sessions, "https://a.example.com/", events=["training.failed"])
    _, other_account = await add_webhook(sessions, "https://b.example.com/", dataset=False)
    async with sessions.begin() as s:
        account_id = (await s.get(Dataset, dataset_id)).account_id  # type: ignore[union-attr]
        everything = Webhook(account_id=account_id, dataset_id=None, url="https://c.example.com/", secret=SECRET,
                             events=["training.finished", "training.failed"])
        s.add(everything)
        await s.flush()
        everything_id = everything.id
    assert await emit(sessions, bus, dataset_id, "training.finished", state="held", version=2,
                      evaluation=EVALUATION) == 1
    assert await emit(sessions, bus, dataset_id, "training.failed", state="failed", version=None,
                      evaluation=None) == 2
    assert await emit(sessions, bus, dataset_id + 1000, "training.failed", state="failed", version=None,
                      evaluation=None) == 0
    rows = await deliveries(sessions)
    assert [(r.webhook_id, r.event) for r in rows] == [
        (everything_id, "training.finished"), (mine, "training.failed"), (everything_id, "training.failed")]
    assert other_account not in {r.webhook_id for r in rows}
    assert rows[0].payload["state"] == "held" and rows[0].payload["version"] == 2


async def test_a_deleted_webhook_stops_its_retries(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], make_worker: Any
) -> None:
    with receiver([500]) as box:
        dataset_id, hook_id = await add_webhook(sessions, box.url)
        _, metrics = await make_worker(delay_s=1.0)
        await emit(sessions, bus, dataset_id, "training.finished", state="live", version=1,
                   evaluation=EVALUATION)
        await until(lambda: asyncio.sleep(0, len(box.requests) == 1))
        async with sessions.begin() as s:
            await s.delete(await s.get(Webhook, hook_id))
        await until(lambda: asyncio.sleep(0, counted(metrics, "dropped") == 1), timeout_s=10)
        await asyncio.sleep(1.0)
        assert len(box.requests) == 1 and await deliveries(sessions) == []


async def test_retries_stop_once_the_retry_window_is_over(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], make_worker: Any
) -> None:
    with receiver([500]) as box:
        dataset_id, _ = await add_webhook(sessions, box.url)
        _, metrics = await make_worker(delay_s=0.3, max_delay_s=0.3, retry_for_s=1.5)
        await emit(sessions, bus, dataset_id, "training.finished", state="live", version=1,
                   evaluation=EVALUATION)

        async def failed() -> WebhookDelivery | None:
            row = (await deliveries(sessions))[0]
            return row if row.state == "failed" else None

        row = await until(failed)
        sent = len(box.requests)
        await asyncio.sleep(1.0)
        assert len(box.requests) == sent == row.attempts and 2 <= sent <= 6
        assert row.last_status == 500 and "gave up" in (row.last_error or "")
        # The last attempt gives up at once when its retry would fall past the window, or is counted a retry when
        # the window ends while it waits (a late redelivery under load), then gives up without sending again.
        assert counted(metrics, "failed") == 1 and counted(metrics, "retry") in (sent - 1, sent)


async def test_the_sweep_publishes_a_delivery_whose_message_was_lost(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], make_worker: Any
) -> None:
    with receiver([200]) as box:
        _, hook_id = await add_webhook(sessions, box.url)
        async with sessions.begin() as s:  # written, never published (the trainer died in between)
            s.add(WebhookDelivery(webhook_id=hook_id, event="training.finished",
                                  payload={"event": "training.finished", "dataset": "news", "version": 1,
                                           "state": "live", "evaluation": None, "at": "2026-01-01T00:00:00Z"}))
        worker, _ = await make_worker()
        await asyncio.sleep(0.5)
        assert box.requests == []  # not overdue yet (the sweep waits a sweep period past due)
        worker.config = WebhookConfig(worker.config.retry, sweep_s=0.0, durable=worker.config.durable)
        assert await worker.sweep() == 1
        await until(lambda: asyncio.sleep(0, len(box.requests) == 1))
        assert json.loads(box.requests[0][1])["at"] == "2026-01-01T00:00:00Z"


async def test_the_trainer_emits_training_events_after_a_refit(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], start_responder: Responder, make_consumer: Any,
    webhook_stream: None,
) -> None:
    await start_responder()
    dataset_id, tags = await seed(sessions, per_group=8)
    async with sessions.begin() as s:
        account_id = (await s.get(Dataset, dataset_id)).account_id  # type: ignore[union-attr]
        s.add(Webhook(account_id=account_id, dataset_id=None, url="https://hooks.example.com/", secret=SECRET,
                      events=["training.finished", "training.failed"]))
        empty = Dataset(account_id=account_id, name="empty", title="empty", kind="text")
        s.add(empty)
        await s.flush()
        empty_id = empty.id
    await make_consumer()
    for target in (dataset_id, empty_id):
        await bus.publish_event(subjects.train_subject(target), TrainRequest(dataset_id=target),
                                msg_id=uuid.uuid4().hex)
    trained = await wait_state(sessions, dataset_id, {"trained", "failed"})
    await wait_state(sessions, empty_id, {"failed"})

    async def both() -> list[WebhookDelivery] | None:
        rows = await deliveries(sessions)
        return rows if len(rows) == 2 else None

    rows = sorted(await until(both), key=lambda r: r.event)
    assert [r.payload["dataset"] for r in rows] == ["empty", "news"]
    failed, finished = (r.payload for r in rows)
    assert failed | {"at": None} == {"event": "training.failed", "dataset": "empty", "version": None,
                                     "state": "failed", "evaluation": None, "at": None}
    assert finished["event"] == "training.finished" and finished["state"] == "live"
    assert finished["version"] == trained.head_version == 1
    assert finished["evaluation"] == trained.evaluation
    # Nothing changed since: a second request keeps the head and sends nothing.
    await bus.publish_event(subjects.train_subject(dataset_id), TrainRequest(dataset_id=dataset_id),
                            msg_id=uuid.uuid4().hex)
    await asyncio.sleep(2.0)
    assert len(await deliveries(sessions)) == 2

    # Labels made wrong on purpose: the fit loses the promotion gate, is held, and says so.
    async with sessions.begin() as s:
        flipped = list(await s.scalars(select(Report.id).where(Report.tag_id == tags["sport"], Report.positive)
                                       .order_by(Report.id).limit(4)))
        await s.execute(update(Report).where(Report.id.in_(flipped)).values(positive=False))
    await bus.publish_event(subjects.train_subject(dataset_id), TrainRequest(dataset_id=dataset_id),
                            msg_id=uuid.uuid4().hex)

    async def three() -> list[WebhookDelivery] | None:
        rows = await deliveries(sessions)
        return rows if len(rows) == 3 else None

    held = (await until(three, timeout_s=30))[-1].payload
    assert (held["event"], held["state"], held["version"]) == ("training.finished", "held", 2)
    assert held["evaluation"]["f1"] < finished["evaluation"]["f1"]
    assert (await wait_state(sessions, dataset_id, {"trained"})).head_version == 1
