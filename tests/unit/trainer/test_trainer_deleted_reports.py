"""delete_report's promise, "the next head forgets it": the refit after a deletion (through the gateway's own
SQL) is a new fit on one report fewer, not the live head kept as unchanged."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.repository import Repository
from shared.bus import Bus
from shared.db.models import Account, Dataset, HeadVersion, Report
from tests.unit.trainer.helpers import TextModel, seed
from trainer.embedder import BusEmbedder
from trainer.fitting import FitConfig
from trainer.heads import ObjectStoreHeads
from trainer.service import Trainer


async def test_the_refit_after_a_deleted_report_fits_without_it(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], text_model: TextModel
) -> None:
    trainer = Trainer(sessions, BusEmbedder(bus), ObjectStoreHeads(bus.js), config=FitConfig(cv_folds=3))
    dataset_id, tags = await seed(sessions)
    first = await trainer.refit(dataset_id)
    assert first.version == 1
    async with sessions.begin() as s:
        account_id = (await s.scalars(select(Account.id))).one()
        wrong = (await s.scalars(
            select(Report).where(Report.tag_id == tags["food"], Report.positive.is_(True)).order_by(Report.id)
        )).first()
        assert wrong is not None
        deleted = await Repository(s).delete_report(account_id, wrong.id, None, None)
        assert deleted is not None and deleted["id"] == wrong.id
        dataset = await s.get(Dataset, dataset_id)
        assert dataset is not None
        dataset.state = "waiting"  # the deletion's report event asks for a refit

    second = await trainer.refit(dataset_id)
    assert second.state != "unchanged" and second.version == 2
    async with sessions() as s:
        counts: dict[int, int] = dict((await s.execute(
            select(HeadVersion.version, HeadVersion.report_count).where(HeadVersion.dataset_id == dataset_id)
        )).all())
        remaining = (await s.scalars(select(Report.id).where(Report.dataset_id == dataset_id))).all()
    assert counts == {1: len(remaining) + 1, 2: len(remaining)}
    assert wrong.id not in remaining
