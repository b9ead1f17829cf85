"""A trainer killed right after a fit commits loses no webhook event: the delivery rows were committed with the
fit, and the next trainer's sweep sends the event, exactly once. Real `python -m trainer` processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from devtools import servers
from shared import subjects
from shared.bus import Bus
from shared.db.models import Dataset, Webhook, WebhookDelivery
from shared.schemas.events import TrainRequest
from tests.unit.trainer.helpers import SECRET, Responder, deliveries, seed, tail, until, wait_http
from tests.webhookreceiver import receiver, verify

pytestmark = pytest.mark.integration  # starts real trainer processes

REPO = Path(__file__).resolve().parents[3]
Started = tuple[subprocess.Popen[bytes], int, Path]  # the process, its health port, its log

# The trainer as deployed, except that it is SIGKILLed the moment the fit's transaction has committed: before
# the consumer acks, announces the head, or publishes anything.
CRASH_AFTER_COMMIT = """
import os, signal, sys
from trainer.main import main
from trainer.service import Trainer

commit = Trainer._commit

async def commit_then_die(self, *args, **kwargs):
    await commit(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

Trainer._commit = commit_then_die
sys.exit(main())
"""


@pytest.fixture
def start_trainer(clean_db: str, nats_url: str, tmp_path: Path) -> Iterator[Callable[..., Started]]:
    """``start_trainer(crash=...)``: a trainer process (its health port, log); killed after the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*, crash: bool) -> Started:
        port = servers.free_port()
        env = {**os.environ, "DATABASE_URL": clean_db, "NATS_URL": nats_url, "KASHF_HEALTH_HOST": "127.0.0.1",
               "KASHF_HEALTH_PORT": str(port), "KASHF_TRAIN_DEBOUNCE_S": "0.2", "KASHF_DRAIN_TIMEOUT_S": "5",
               "KASHF_CV_FOLDS": "3", "KASHF_TRAIN_ACK_WAIT_S": "3", "FETCH_ALLOW_HOSTS": "127.0.0.1",
               "KASHF_WEBHOOK_SWEEP_S": "1"}
        log = tmp_path / f"trainer-{len(procs)}.log"
        args = ["-c", CRASH_AFTER_COMMIT] if crash else ["-m", "trainer"]
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc, port, log

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


async def test_a_trainer_killed_after_the_fit_commits_still_delivers_the_event_once(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], start_responder: Responder, webhook_stream: None,
    start_trainer: Callable[..., Started],
) -> None:
    start = start_trainer
    await start_responder()
    with receiver([200]) as box:
        dataset_id, _ = await seed(sessions, per_group=8)
        async with sessions.begin() as s:
            account_id = (await s.get(Dataset, dataset_id)).account_id  # type: ignore[union-attr]
            s.add(Webhook(account_id=account_id, dataset_id=dataset_id, url=box.url, secret=SECRET,
                          events=["training.finished"]))

        doomed, port, log = start(crash=True)
        await wait_http(port, "/readyz", 200, doomed, log)
        await bus.publish_event(subjects.train_subject(dataset_id), TrainRequest(dataset_id=dataset_id),
                                msg_id=uuid.uuid4().hex)
        assert await asyncio.to_thread(doomed.wait, 60) == -signal.SIGKILL, tail(log)

        # The fit is committed, and its event with it; nothing was published or sent.
        async with sessions() as s:
            dataset = await s.get(Dataset, dataset_id)
            assert dataset is not None and (dataset.state, dataset.head_version) == ("trained", 1)
        [row] = await deliveries(sessions)
        assert (row.state, row.attempts) == ("pending", 0)
        assert (row.payload["event"], row.payload["state"], row.payload["version"]) == (
            "training.finished", "live", 1)
        assert (await bus.js.stream_info(subjects.WEBHOOKS_STREAM)).state.messages == 0
        assert box.requests == []

        # The trainer that takes over sends it (its sweep finds the row overdue), once.
        successor, port, log = start(crash=False)
        await wait_http(port, "/readyz", 200, successor, log)

        async def delivered() -> WebhookDelivery | None:
            rows = await deliveries(sessions)
            return rows[0] if rows and rows[0].state == "delivered" else None

        sent = await until(delivered, timeout_s=30)
        # Several sweep periods, and the unacked train request's redelivery (ack wait 3 s): nothing more.
        await asyncio.sleep(6)
        assert len(box.requests) == 1, box.requests
        assert [(r.id, r.state, r.attempts) for r in await deliveries(sessions)] == [(sent.id, "delivered", 1)]
        headers, body = box.requests[0]
        assert verify(SECRET, headers["kashf-signature"], body)
        assert json.loads(body)["version"] == 1
        successor.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(successor.wait, 15) == 0, tail(log)
