"""`python -m trainer` as a real process: readiness, a train request served end to end, a lost one requeued,
graceful SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from devtools import servers
from modelkit.heads import load_head
from shared.bus import Bus, ensure_streams
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.models import Dataset
from shared.schemas.events import DatasetsChanged, TrainRequest
from shared.subjects import DATASETS_CHANGED, EVENTS_STREAM, TRAINER_DURABLE, train_subject
from tests.unit.trainer.helpers import MODEL_ID, TextModel, seed, tail, wait_http, wait_state

pytestmark = pytest.mark.integration  # starts the real service process

REPO = Path(__file__).resolve().parents[3]
Running = tuple[subprocess.Popen[bytes], int, Path]  # the process, its health port, its log


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_url, "test-trainer-process")
    await ensure_streams(bus.js)
    await bus.js.purge_stream(EVENTS_STREAM)  # the durable then sees only this test's events
    await TextModel().serve(bus)
    yield bus
    await bus.close(5)


@pytest.fixture
def trainer_process(clean_db: str, nats_url: str, tmp_path: Path) -> Iterator[Running]:
    port = servers.free_port()
    env = {**os.environ, "DATABASE_URL": clean_db, "NATS_URL": nats_url, "KASHF_HEALTH_HOST": "127.0.0.1",
           "KASHF_HEALTH_PORT": str(port), "KASHF_TRAIN_DEBOUNCE_S": "0.2", "KASHF_DRAIN_TIMEOUT_S": "5",
           "KASHF_CV_FOLDS": "3", "KASHF_TRAIN_STALL_S": "1"}
    log = tmp_path / "trainer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "trainer"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        yield proc, port, log
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


async def test_trainer_process_trains_and_stops_cleanly(
    clean_db: str, client: Bus, trainer_process: Running,
) -> None:
    proc, port, log = trainer_process
    engine = make_engine(clean_db, pool_size=2)
    try:
        await wait_http(port, "/readyz", 200, proc, log)
        sessions = make_sessionmaker(engine)
        dataset_id, _ = await seed(sessions)
        announced: list[DatasetsChanged] = []
        heard = asyncio.Event()

        def on_changed(message: DatasetsChanged) -> None:
            announced.append(message)
            heard.set()

        await client.listen(DATASETS_CHANGED, DatasetsChanged, on_changed)
        await client.nc.flush()
        await client.publish_event(train_subject(dataset_id), TrainRequest(dataset_id=dataset_id),
                                   msg_id=uuid.uuid4().hex)
        dataset = await wait_state(sessions, dataset_id, {"trained", "failed"})
        assert dataset.state == "trained", dataset.state_reason
        assert dataset.head_version is not None
        head = await load_head(client.js, dataset_id, dataset.head_version)
        assert head.model_id == MODEL_ID
        # Gateways learn of the new head at once (they cache the dataset's head version).
        await asyncio.wait_for(heard.wait(), 5)
        assert [m.dataset_ids for m in announced] == [[dataset_id]]
        # A crashed replica's events come back after ack_wait, 15 s by default (was 60).
        info = await client.js.consumer_info(EVENTS_STREAM, TRAINER_DURABLE)
        assert info.config.ack_wait == 15.0

        # A request lost on its way (the dataset says waiting, no event anywhere) is requeued and served.
        lost, _ = await seed(sessions)
        async with sessions.begin() as s:
            await s.execute(update(Dataset).where(Dataset.id == lost).values(state="waiting"))
        requeued = await wait_state(sessions, lost, {"trained", "failed"})
        assert requeued.state == "trained", requeued.state_reason
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0, tail(log)
    finally:
        await engine.dispose()
