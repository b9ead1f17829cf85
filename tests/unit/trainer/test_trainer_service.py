"""One refit (trainer.service) against real Postgres and a text model answering on the real subjects."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelkit.heads import load_head, store_head
from shared.bus import Bus
from shared.db.models import Dataset, Embedding
from tests.unit.trainer.helpers import TextModel, seed
from trainer.embedder import BusEmbedder
from trainer.fitting import FitConfig
from trainer.service import ModelChanged, Trainer


@pytest.fixture
async def text_model(nats_url: str) -> AsyncIterator[TextModel]:
    model = TextModel("model-a")
    responder = await Bus.connect(nats_url, "test-text-model")
    await model.serve(responder)
    yield model
    await responder.close(5)


@pytest.fixture
def trainer(bus: Bus, sessions: async_sessionmaker[AsyncSession]) -> Trainer:
    return Trainer(sessions, BusEmbedder(bus), functools.partial(store_head, bus.js), config=FitConfig(cv_folds=3))


async def embeddings_by_model(sessions: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    async with sessions() as s:
        rows = await s.execute(select(Embedding.model_id, func.count()).group_by(Embedding.model_id))
        return {model_id: n for model_id, n in rows}


async def test_a_reply_from_another_model_aborts_the_refit_before_storing_a_vector(
    sessions: async_sessionmaker[AsyncSession], text_model: TextModel, trainer: Trainer,
) -> None:
    dataset_id, _ = await seed(sessions)
    text_model.embed_model = "model-b"  # a replica still on another model answers the embed request
    with pytest.raises(ModelChanged, match="model-a -> model-b"):
        await trainer.refit(dataset_id)
    assert await embeddings_by_model(sessions) == {}

    text_model.embed_model = "model-a"
    outcome = await trainer.refit(dataset_id)
    assert outcome.state == "trained" and outcome.embedded == 15
    assert await embeddings_by_model(sessions) == {"model-a": 15}


async def test_each_refit_asks_the_model_so_an_upgrade_refits_on_the_new_one(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], text_model: TextModel, trainer: Trainer,
) -> None:
    dataset_id, _ = await seed(sessions)
    first = await trainer.refit(dataset_id)
    assert (first.state, first.version, first.embedded) == ("trained", 1, 15)
    again = await trainer.refit(dataset_id)
    assert (again.version, again.embedded) == (2, 0)  # stored embeddings of the same model are reused

    text_model.info_model = text_model.embed_model = "model-b"
    upgraded = await trainer.refit(dataset_id)
    # Every item embedded again by the new model, none of the old vectors in the fit.
    assert (upgraded.state, upgraded.version, upgraded.embedded) == ("trained", 3, 15)
    assert (await load_head(bus.js, dataset_id, 3)).model_id == "model-b"
    async with sessions() as s:
        dataset = await s.get(Dataset, dataset_id)
    assert dataset is not None and dataset.model_id == "model-b" and dataset.head_version == 3
    assert await embeddings_by_model(sessions) == {"model-a": 15, "model-b": 15}


async def test_a_dataset_that_is_gone_is_reported_missing(
    sessions: async_sessionmaker[AsyncSession], text_model: TextModel, trainer: Trainer,
) -> None:
    outcome = await trainer.refit(987654)
    assert outcome.state == "missing" and outcome.version is None
