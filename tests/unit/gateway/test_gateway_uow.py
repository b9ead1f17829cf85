"""The unit of work: a commit is followed by the outbox publication and the dataset-cache invalidation
(here and by broadcast); work left without a commit writes, publishes and invalidates nothing."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import pytest

from gateway.infra.datasetcache import DatasetView
from gateway.infra.outbox import OutboxEvent
from shared.bus import Bus
from shared.schemas.events import DatasetsChanged, TrainRequest
from shared.schemas.inference import HeadRef
from shared.subjects import DATASETS_CHANGED, train_subject
from tests.unit.gateway.harness import Gateway, eventually, sql


async def _dataset(gw: Gateway) -> tuple[int, int]:
    """(account id, dataset id) of a fresh text dataset "d"."""
    async with gw.state.unit_of_work() as uow:
        account_id = await uow.repo.get_or_create_account("acme")
        dataset = await uow.repo.get_or_create_dataset(account_id, "d")
        await uow.commit()
    return account_id, dataset.id


async def test_commit_publishes_and_invalidates_and_rollback_does_neither(gw: Gateway, nats_url: str) -> None:
    account_id, dataset_id = await _dataset(gw)
    cache = gw.state.datasets
    view = DatasetView(dataset_id, "text", HeadRef(dataset_id=dataset_id, version=None), ())
    assert await cache.get_or_load(account_id, "d", _loader(view)) == view  # cached, as a tag request would
    heard: list[DatasetsChanged] = []
    listener = await Bus.connect(nats_url, "listener")
    await listener.listen(DATASETS_CHANGED, DatasetsChanged, heard.append)
    event = OutboxEvent(train_subject(dataset_id), f"train-{dataset_id}", TrainRequest(dataset_id=dataset_id))
    try:
        with pytest.raises(RuntimeError):
            async with gw.state.unit_of_work() as uow:
                await uow.repo.insert_tag(dataset_id, "left behind")
                uow.stage(event)
                uow.dataset_changed(dataset_id)
                raise RuntimeError("the request failed")
        assert cache.get(account_id, "d") == view
        assert await sql(gw.settings.database_url, "SELECT id FROM tag") == []

        async with gw.state.unit_of_work() as uow:
            await uow.repo.insert_tag(dataset_id, "kept")
            uow.stage(event)
            uow.dataset_changed(dataset_id)
            await uow.commit()
        assert cache.get(account_id, "d") is None  # dropped here at once
        rows = await sql(gw.settings.database_url, "SELECT id, msg_id FROM outbox")
        assert len(rows) == 1 and re.fullmatch(f"train-{dataset_id}-[0-9a-f]{{32}}", rows[0]["msg_id"])
        published = "SELECT id FROM outbox WHERE published_at IS NOT NULL"
        assert await eventually(lambda: sql(gw.settings.database_url, published))

        async def heard_one() -> bool:
            return bool(heard)

        # Other replicas hear it; the failed work's broadcast would have come first, and never did.
        assert await eventually(heard_one)
        assert [(m.dataset_ids, m.origin) for m in heard] == [([dataset_id], cache.instance_id)]
    finally:
        await listener.close()


def _loader(view: DatasetView) -> Callable[[], Awaitable[DatasetView]]:
    async def load() -> DatasetView:
        return view

    return load
