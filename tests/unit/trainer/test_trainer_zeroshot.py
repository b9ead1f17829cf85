"""A text dataset with tags and no positive report is trained from its tag titles alone (zero-shot), against real
Postgres and a text model answering on the real subjects; reports then train it as usual. Image datasets and
text datasets with fewer than two tags still fail."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelkit.heads import load_head, tag_vectors
from shared.bus import Bus
from shared.db.models import DataItem, Dataset, HeadVersion, Report, Tag
from shared.schemas.events import TrainRequest
from shared.schemas.inference import TagRef
from shared.subjects import train_subject
from tests.unit.trainer.helpers import GROUPS, TextModel, embed_one, new_dataset, wait_state
from trainer.embedder import BusEmbedder
from trainer.fitting import FitConfig
from trainer.heads import ObjectStoreHeads
from trainer.service import Trainer


@pytest.fixture
def trainer(bus: Bus, sessions: async_sessionmaker[AsyncSession]) -> Trainer:
    return Trainer(sessions, BusEmbedder(bus), ObjectStoreHeads(bus.js), config=FitConfig(cv_folds=3))


async def titled(sessions: async_sessionmaker[AsyncSession], titles: tuple[str, ...] = GROUPS,
                 kind: str = "text") -> tuple[int, dict[str, int]]:
    """A dataset of ``kind`` with one tag per title and no report."""
    async with sessions.begin() as s:
        dataset = await new_dataset(s, "titles", "titles", kind)
        tags = {t: Tag(dataset_id=dataset.id, title=t) for t in titles}
        s.add_all(tags.values())
        await s.flush()
        return dataset.id, {t: tag.id for t, tag in tags.items()}


async def report(sessions: async_sessionmaker[AsyncSession], dataset_id: int, text: str, tag_id: int,
                 positive: bool) -> None:
    async with sessions.begin() as s:
        item = DataItem(dataset_id=dataset_id, kind="text", content=text,
                        content_hash=hashlib.sha256(text.encode()).hexdigest())
        s.add(item)
        await s.flush()
        s.add(Report(dataset_id=dataset_id, item_id=item.id, tag_id=tag_id, positive=positive))


async def versions(sessions: async_sessionmaker[AsyncSession], dataset_id: int) -> list[tuple[int, str, int]]:
    async with sessions() as s:
        rows = await s.execute(select(HeadVersion.version, HeadVersion.mode, HeadVersion.report_count)
                               .where(HeadVersion.dataset_id == dataset_id).order_by(HeadVersion.version))
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_titles_alone_train_a_head_that_tags_texts(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], text_model: TextModel, trainer: Trainer,
) -> None:
    dataset_id, tags = await titled(sessions)
    outcome = await trainer.refit(dataset_id)
    assert (outcome.state, outcome.version, outcome.embedded) == ("trained", 1, 0)
    assert outcome.result is not None and outcome.result.mode == "zero_shot"
    assert await versions(sessions, dataset_id) == [(1, "zero_shot", 0)]
    async with sessions() as s:
        dataset = await s.get(Dataset, dataset_id)
        stored = (await s.scalars(select(Tag).where(Tag.dataset_id == dataset_id))).all()
    assert dataset is not None and (dataset.state, dataset.head_version) == ("trained", 1)
    assert dataset.evaluation == {"recall": None, "precision": None, "f1": None}  # nothing to cross-validate
    assert {t.threshold for t in stored} == {0.5}

    head = await load_head(bus.js, dataset_id, 1)
    assert head.exclusive and sorted(head.tag_ids.tolist()) == sorted(tags.values())
    texts = [f"{g} item never reported {i}" for g in GROUPS for i in range(3)]
    rows = tag_vectors(head, [embed_one(t) for t in texts], [TagRef(id=i, title=t) for t, i in tags.items()])
    assert [r[0].id for r in rows] == [tags[t.split()[0]] for t in texts]

    # Nothing changed: the head stays. A renamed tag changes the head; an active flag does not (it competes).
    assert (await trainer.refit(dataset_id)).state == "unchanged"
    async with sessions.begin() as s:
        await s.execute(update(Tag).where(Tag.id == tags["music"]).values(active=False))
    assert (await trainer.refit(dataset_id)).state == "unchanged"
    async with sessions.begin() as s:
        await s.execute(update(Tag).where(Tag.id == tags["music"]).values(title="food and music"))
    renamed = await trainer.refit(dataset_id)
    assert (renamed.state, renamed.version) == ("trained", 2)


async def test_positive_reports_make_it_a_trained_head_and_negatives_alone_do_not(
    sessions: async_sessionmaker[AsyncSession], text_model: TextModel, trainer: Trainer,
) -> None:
    dataset_id, tags = await titled(sessions)
    await report(sessions, dataset_id, "sport not about food", tags["food"], False)
    first = await trainer.refit(dataset_id)
    assert first.state == "trained" and first.result is not None and first.result.mode == "zero_shot"
    for group in GROUPS:
        for i in range(4):
            await report(sessions, dataset_id, f"{group} reported example {i}", tags[group], True)
    trained = await trainer.refit(dataset_id)
    assert trained.state == "trained" and trained.result is not None and trained.result.mode == "trained"
    assert trained.evaluation is not None and trained.evaluation["f1"] is not None
    # The zero-shot head read no report (the negative taught it nothing); the trained one all 13.
    assert await versions(sessions, dataset_id) == [(1, "zero_shot", 0), (2, "trained", 13)]


@pytest.mark.parametrize(("titles", "kind", "reason"), [
    (("sport",), "text", "the dataset has no reports yet, and tagging from tag titles alone needs at least 2 tags"),
    (GROUPS, "image", "the dataset has no reports yet"),
])
async def test_what_titles_cannot_train_still_fails(
    sessions: async_sessionmaker[AsyncSession], text_model: TextModel, trainer: Trainer,
    titles: tuple[str, ...], kind: str, reason: str,
) -> None:
    dataset_id, _ = await titled(sessions, titles, kind)
    outcome = await trainer.refit(dataset_id)
    assert (outcome.state, outcome.reason) == ("failed", reason)
    async with sessions() as s:
        dataset = await s.get(Dataset, dataset_id)
    assert dataset is not None and (dataset.state, dataset.state_reason, dataset.head_version) == (
        "failed", reason, None)
    assert await versions(sessions, dataset_id) == []


async def test_a_title_change_waits_like_a_report_then_refits(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], text_model: TextModel, make_consumer: Any,
) -> None:
    dataset_id, _ = await titled(sessions)
    await make_consumer(debounce_s=2.0)
    await bus.publish_event(train_subject(dataset_id), TrainRequest(dataset_id=dataset_id, reason="titles"),
                            msg_id=uuid.uuid4().hex)
    await asyncio.sleep(0.5)  # an "api" request would be refitting by now; "titles" waits out the debounce
    async with sessions() as s:
        assert (await s.get(Dataset, dataset_id)).state == "untrained"  # type: ignore[union-attr]
    dataset = await wait_state(sessions, dataset_id, {"trained", "failed"})
    assert (dataset.state, dataset.head_version) == ("trained", 1)
