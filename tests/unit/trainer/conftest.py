"""Fixtures of the trainer tests: the session database emptied, a bus with the events stream emptied,
test text models on the bus, trainer consumers stopped after the test, the webhook deliveries stream emptied."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared import subjects
from shared.bus import Bus, ensure_streams
from shared.bus.streams import declare_stream, webhooks_config
from shared.db.engine import make_engine, make_sessionmaker
from shared.subjects import EVENTS_STREAM
from tests.unit.trainer.helpers import MODEL_ID, Responder, TextModel
from trainer.consumers import TrainerConsumer
from trainer.embedder import BusEmbedder
from trainer.fitting import FitConfig
from trainer.heads import ObjectStoreHeads
from trainer.service import Trainer

if TYPE_CHECKING:
    from bench.quality import QTrack

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module", params=["fa-reviews", "en-reviews"])
def reviews(request: pytest.FixtureRequest) -> QTrack:
    """e5 embeddings of bench.quality's Persian, then English review track (skipped without a built model)."""
    from bench.quality import text_tracks

    root = Path(os.environ.get("KASHF_MODELS_DIR", REPO / "models"))
    if not (root / "text/multilingual-e5-small/manifest.json").is_file():
        pytest.skip(f"no built text model under {root} (run `make models`)")
    return text_tracks(root, [request.param])[0]


@pytest.fixture
async def engine(clean_db: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(clean_db, pool_size=4)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    """A client bus; the events stream starts empty, so a new durable sees only this test's events."""
    bus = await Bus.connect(nats_url, "test-trainer")
    await ensure_streams(bus.js)
    await bus.js.purge_stream(EVENTS_STREAM)
    yield bus
    await bus.close(5)


@pytest.fixture
def text_model_id() -> str:
    """The model id ``text_model`` answers with (a test module may override it)."""
    return MODEL_ID


@pytest.fixture
async def text_model(nats_url: str, text_model_id: str) -> AsyncIterator[TextModel]:
    """A test text model serving embeddings and model info on the real subjects."""
    model = TextModel(text_model_id)
    responder = await Bus.connect(nats_url, "test-text-model")
    await model.serve(responder)
    yield model
    await responder.close(5)


@pytest.fixture
async def start_responder(nats_url: str) -> AsyncIterator[Responder]:
    started: list[Bus] = []

    async def start() -> Bus:
        responder = await Bus.connect(nats_url, "test-embed-responder")
        await TextModel().serve(responder)
        started.append(responder)
        return responder

    yield start
    for responder in started:
        await responder.close(5)


@pytest.fixture
async def make_consumer(bus: Bus, sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[Any]:
    """``await make_consumer(durable=..., heads=...)``: a started TrainerConsumer (a trainer replica);
    ``trainer=`` gives it a trainer of the test's own."""
    consumers: list[TrainerConsumer] = []

    async def make(**overrides: Any) -> TrainerConsumer:
        trainer = overrides.pop("trainer", None) or Trainer(
            sessions, BusEmbedder(overrides.pop("bus", bus)), overrides.pop("heads", ObjectStoreHeads(bus.js)),
            config=FitConfig(cv_folds=3))
        options: dict[str, Any] = {"debounce_s": 0.3, "max_deliver": 5, "ack_wait_s": 5.0,
                                   "durable": f"trainer-test-{uuid.uuid4().hex[:8]}", "retry_delay_s": 0.3}
        options |= overrides
        consumer = TrainerConsumer(options.pop("consumer_bus", bus), trainer, **options)
        await consumer.start()
        consumers.append(consumer)
        return consumer

    yield make
    for consumer in consumers:
        await consumer.stop(5)


@pytest.fixture
async def webhook_stream(bus: Bus) -> None:
    """The deliveries stream, emptied: a new durable sees only this test's messages."""
    await declare_stream(bus.js, webhooks_config(), None)
    await bus.js.purge_stream(subjects.WEBHOOKS_STREAM)
