"""Head versions (trainer.service): the promotion gate holds a worse fit, force promotes it, retention deletes
old version rows and their blobs but never the live one. Real Postgres, NATS object store and a text model."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelkit.heads import load_head, object_name
from shared.bus import Bus
from shared.db.models import Dataset, HeadVersion, Report, Tag
from shared.errors import Unavailable
from tests.unit.trainer.helpers import TextModel, seed
from trainer.embedder import BusEmbedder
from trainer.fitting import FitConfig
from trainer.heads import ObjectStoreHeads
from trainer.repository import VersionFigures
from trainer.service import Trainer, promotion_gate


def make_trainer(bus: Bus, sessions: async_sessionmaker[AsyncSession], kept: int = 3) -> Trainer:
    return Trainer(sessions, BusEmbedder(bus), ObjectStoreHeads(bus.js, versions_kept=kept),
                   config=FitConfig(cv_folds=3), promotion_tolerance=2.0)


async def flip_labels(sessions: async_sessionmaker[AsyncSession], dataset_id: int, tag_id: int, n: int) -> None:
    """Turn ``n`` positive reports of the tag negative: labels made wrong on purpose."""
    async with sessions.begin() as s:
        ids = list(await s.scalars(select(Report.id).where(Report.tag_id == tag_id, Report.positive)
                                   .order_by(Report.id).limit(n)))
        await s.execute(update(Report).where(Report.id.in_(ids)).values(positive=False))


async def versions(sessions: async_sessionmaker[AsyncSession], dataset_id: int) -> dict[int, bool]:
    """version -> held, of the rows the dataset still has."""
    async with sessions() as s:
        rows = await s.execute(select(HeadVersion.version, HeadVersion.held)
                               .where(HeadVersion.dataset_id == dataset_id).order_by(HeadVersion.version))
        return {v: held for v, held in rows}


async def stored(trainer: Trainer, dataset_id: int, upto: int) -> list[int]:
    return [v for v in range(1, upto + 1) if await trainer.heads.exists(object_name(dataset_id, v))]


async def get_dataset(sessions: async_sessionmaker[AsyncSession], dataset_id: int) -> Dataset:
    async with sessions() as s:
        dataset = await s.get(Dataset, dataset_id)
    assert dataset is not None
    return dataset


async def test_a_fit_made_worse_by_flipped_labels_is_held_and_force_promotes_it(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], text_model: TextModel,
) -> None:
    trainer = make_trainer(bus, sessions)
    dataset_id, tags = await seed(sessions, per_group=8)
    first = await trainer.refit(dataset_id)
    assert (first.state, first.version) == ("trained", 1)
    assert first.evaluation is not None and first.macro_f1 is not None and first.macro_f1 > 90
    async with sessions() as s:
        row = (await s.scalars(select(HeadVersion).where(HeadVersion.dataset_id == dataset_id))).one()
        sport = await s.get(Tag, tags["sport"])
    assert row.evaluation == first.evaluation and row.macro_f1 == first.macro_f1 and not row.held
    assert sport is not None and row.tags is not None
    assert row.tags[str(sport.id)] == {"threshold": sport.threshold, "evaluation": sport.evaluation}

    await flip_labels(sessions, dataset_id, tags["sport"], 4)
    held = await trainer.refit(dataset_id)
    assert (held.state, held.version) == ("held", 2)
    assert held.macro_f1 is not None and held.macro_f1 < first.macro_f1 - 2
    assert held.reason is not None and "held" in held.reason and "force" in held.reason
    dataset = await get_dataset(sessions, dataset_id)
    # The live head keeps answering: the dataset still points at version 1 and its figures.
    assert (dataset.head_version, dataset.state) == (1, "trained")
    assert dataset.state_reason == held.reason
    async with sessions() as s:
        sport = await s.get(Tag, tags["sport"])
    assert sport is not None and sport.evaluation == row.tags[str(sport.id)]["evaluation"]
    assert await versions(sessions, dataset_id) == {1: False, 2: True}
    assert (await load_head(bus.js, dataset_id, 2)).version == 2  # stored, ready for use_version

    # Asked again with nothing changed: the same held fit, not a third version.
    again = await trainer.refit(dataset_id)
    assert (again.state, again.version) == ("unchanged", 1)
    assert (await get_dataset(sessions, dataset_id)).state_reason == f"version 2: {held.reason}"

    forced = await trainer.refit(dataset_id, force=True)
    assert (forced.state, forced.version) == ("trained", 3)
    dataset = await get_dataset(sessions, dataset_id)
    assert (dataset.head_version, dataset.state, dataset.state_reason) == (3, "trained", None)
    assert await versions(sessions, dataset_id) == {1: False, 2: True, 3: False}


async def test_a_fit_as_good_as_the_live_one_is_promoted(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], text_model: TextModel,
) -> None:
    trainer = make_trainer(bus, sessions)
    dataset_id, _ = await seed(sessions, per_group=8)
    assert (await trainer.refit(dataset_id)).version == 1
    async with sessions.begin() as s:  # a new tag: never a reason to hold (the gate compares common tags)
        s.add(Tag(dataset_id=dataset_id, title="new"))
    second = await trainer.refit(dataset_id)
    assert (second.state, second.version) == ("trained", 2)
    assert (await get_dataset(sessions, dataset_id)).head_version == 2


def test_the_gate_compares_the_tags_both_versions_evaluate() -> None:
    def figures(**f1: float | None) -> dict[str, dict[str, object]]:
        return {k.strip("t"): {"threshold": 0.5, "evaluation": {"recall": f, "precision": f, "f1": f}}
                for k, f in f1.items()}

    live = VersionFigures(version=4, model_id="m", macro_f1=90.0, tags=figures(t1=90.0, t2=90.0))
    gate = {"model_id": "m", "active": {1, 2, 3}, "tolerance": 2.0}
    assert promotion_gate(figures(t1=89.0, t2=89.0, t3=0.0), live, **gate) is None  # within 2 points; t3 new
    reason = promotion_gate(figures(t1=80.0, t2=90.0), live, **gate)
    assert reason is not None and "85.0 is 5.0 points below live version 4's 90.0 over the 2 tags" in reason
    assert promotion_gate(figures(t1=80.0, t2=90.0), live, **(gate | {"active": {2}})) is None  # t1 inactive
    assert promotion_gate(figures(t1=0.0, t2=0.0), live, **(gate | {"model_id": "other"})) is None
    assert promotion_gate(figures(t1=0.0), None, **gate) is None
    assert promotion_gate(figures(t1=None, t2=None), live, **gate) is None


async def test_retention_deletes_old_rows_and_blobs_and_never_the_live_or_newer_held_ones(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], text_model: TextModel,
) -> None:
    trainer = make_trainer(bus, sessions, kept=1)
    dataset_id, tags = await seed(sessions, per_group=8)
    for version in (1, 2, 3):
        assert (await trainer.refit(dataset_id, force=True)).version == version
    # Live 3 and one older version kept: v1's row and blob are gone.
    assert await versions(sessions, dataset_id) == {2: False, 3: False}
    assert await stored(trainer, dataset_id, 3) == [2, 3]

    # A rollback to the oldest kept version, then a held fit above it: live 2, held 4, and the newest
    # other (3) stay.
    async with sessions.begin() as s:
        await s.execute(update(Dataset).where(Dataset.id == dataset_id).values(head_version=2))
    await flip_labels(sessions, dataset_id, tags["sport"], 4)
    held = await trainer.refit(dataset_id)
    assert (held.state, held.version) == ("held", 4)
    assert await versions(sessions, dataset_id) == {2: False, 3: False, 4: True}
    assert await stored(trainer, dataset_id, 4) == [2, 3, 4]

    # Forced v5 live: kept = 1 leaves v4 (the newest other), v2 and v3 go, rows and blobs.
    assert (await trainer.refit(dataset_id, force=True)).state == "trained"
    assert await versions(sessions, dataset_id) == {4: True, 5: False}
    assert await stored(trainer, dataset_id, 5) == [4, 5]
    with pytest.raises(Unavailable):
        await load_head(bus.js, dataset_id, 2)

    trainer.heads.versions_kept = 0  # nothing kept besides the live head, which always stays
    assert (await trainer.refit(dataset_id, force=True)).version == 6
    assert await versions(sessions, dataset_id) == {6: False}
    assert await stored(trainer, dataset_id, 6) == [6]
