"""One refit (trainer.service) against real Postgres and a text model answering on the real subjects."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelkit.heads import load_head, object_name
from shared.bus import Bus
from shared.db.models import DataItem, Dataset, Embedding, HeadVersion, Report, Tag
from shared.schemas.inference import EmbedReply, EmbedTextsRequest
from shared.subjects import HEADS_BUCKET
from tests.unit.trainer.helpers import TextModel, seed
from trainer.embedder import BusEmbedder, ModelChanged
from trainer.fitting import FitConfig
from trainer.heads import ObjectStoreHeads
from trainer.service import Trainer


@pytest.fixture
def text_model_id() -> str:
    return "model-a"


@pytest.fixture
def trainer(bus: Bus, sessions: async_sessionmaker[AsyncSession]) -> Trainer:
    return Trainer(sessions, BusEmbedder(bus), ObjectStoreHeads(bus.js), config=FitConfig(cv_folds=3))


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
    again = await trainer.refit(dataset_id, force=True)
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


async def head_versions(sessions: async_sessionmaker[AsyncSession], dataset_id: int) -> list[int]:
    async with sessions() as s:
        return sorted(await s.scalars(select(HeadVersion.version).where(HeadVersion.dataset_id == dataset_id)))


async def test_a_refit_with_nothing_changed_keeps_the_head_and_any_change_fits_again(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], text_model: TextModel, trainer: Trainer,
) -> None:
    dataset_id, tags = await seed(sessions)
    assert (await trainer.refit(dataset_id)).version == 1
    async with sessions.begin() as s:  # a train request marked it waiting
        dataset = await s.get(Dataset, dataset_id)
        assert dataset is not None
        dataset.state = "waiting"

    kept = await trainer.refit(dataset_id)
    assert (kept.state, kept.version, kept.embedded) == ("unchanged", 1, 0)
    async with sessions() as s:
        row = await s.get(Dataset, dataset_id)
    assert row is not None and (row.state, row.state_reason, row.head_version) == ("trained", None, 1)
    assert await head_versions(sessions, dataset_id) == [1]

    # Each input of a fit counts: a new report, a report's sign, a tag's active flag, the model.
    async with sessions.begin() as s:
        text = "sport one more sentence"
        item = DataItem(dataset_id=dataset_id, kind="text", content=text,
                        content_hash=hashlib.sha256(text.encode()).hexdigest())
        s.add(item)
        await s.flush()
        s.add(Report(dataset_id=dataset_id, item_id=item.id, tag_id=tags["sport"], positive=True))
    assert (await trainer.refit(dataset_id)).version == 2
    async with sessions.begin() as s:
        report = (await s.scalars(select(Report).where(Report.item_id == item.id))).one()
        report.positive = False
    assert (await trainer.refit(dataset_id)).version == 3
    async with sessions.begin() as s:
        tag = await s.get(Tag, tags["music"])
        assert tag is not None
        tag.active = True
    assert (await trainer.refit(dataset_id)).version == 4
    assert (await trainer.refit(dataset_id)).state == "unchanged"
    text_model.info_model = text_model.embed_model = "model-b"
    assert (await trainer.refit(dataset_id)).version == 5
    # Retention: the live version and the 3 newest others (KASHF_HEAD_VERSIONS_KEPT's default) stay.
    assert await head_versions(sessions, dataset_id) == [2, 3, 4, 5]


async def test_a_head_lost_from_the_store_is_fitted_again_even_with_nothing_changed(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], text_model: TextModel, trainer: Trainer,
) -> None:
    dataset_id, _ = await seed(sessions)
    assert (await trainer.refit(dataset_id)).version == 1
    await bus.js.delete_object_store(HEADS_BUCKET)  # the object store was lost or wiped
    again = await trainer.refit(dataset_id)
    assert (again.state, again.version) == ("trained", 2)
    assert (await load_head(bus.js, dataset_id, 2)).model_id == "model-a"


async def test_old_head_versions_are_pruned_once_a_new_head_is_live(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], text_model: TextModel,
) -> None:
    trainer = Trainer(sessions, BusEmbedder(bus), ObjectStoreHeads(bus.js, versions_kept=2),
                      config=FitConfig(cv_folds=3))
    dataset_id, _ = await seed(sessions)
    for version in range(1, 5):
        assert (await trainer.refit(dataset_id, force=True)).version == version
    stored = {v: await trainer.heads.exists(object_name(dataset_id, v)) for v in range(1, 5)}
    assert stored == {1: False, 2: True, 3: True, 4: True}  # the live head and the two before it
    assert (await load_head(bus.js, dataset_id, 4)).model_id == "model-a"


async def test_a_text_refit_fits_the_tag_titles_as_examples_and_a_retitle_refits(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], nats_url: str,
) -> None:
    class Recording(TextModel):
        def __init__(self) -> None:
            super().__init__("model-a")
            self.texts: list[str] = []

        async def embed(self, request: EmbedTextsRequest) -> EmbedReply:
            self.texts += request.texts
            return await super().embed(request)

    model = Recording()
    responder = await Bus.connect(nats_url, "test-text-model")
    await model.serve(responder)
    try:
        dataset_id, tags = await seed(sessions)
        off = Trainer(sessions, BusEmbedder(bus), ObjectStoreHeads(bus.js),
                      config=FitConfig(cv_folds=3, title_examples=False))
        assert (await off.refit(dataset_id)).state == "trained"
        assert not set(tags) & set(model.texts)  # switched off: titles are never embedded
        on = Trainer(sessions, BusEmbedder(bus), ObjectStoreHeads(bus.js), config=FitConfig(cv_folds=3))
        model.texts.clear()
        assert (await on.refit(dataset_id)).state == "trained"
        assert set(tags) <= set(model.texts)  # every tag's title embedded for the fit
        assert (await on.refit(dataset_id)).state == "unchanged"
        async with sessions.begin() as s:
            tag = await s.get(Tag, next(iter(tags.values())))
            assert tag is not None
            tag.title = "a new title"
        assert (await on.refit(dataset_id)).state == "trained"  # the title is an input of the fit
    finally:
        await responder.close(5)
