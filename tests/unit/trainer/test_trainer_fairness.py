"""Refits are shared fairly across accounts: one account's burst of datasets does not hold another account's
single dataset behind all of it (issue 18). The slots alone, then the real consumer and trainer on the bus."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.bus import Bus
from shared.db.models import Account, DataItem, Dataset, Report, Tag
from shared.schemas.events import TrainRequest
from shared.subjects import train_subject
from tests.unit.trainer.helpers import GROUPS, TextModel, wait_state
from trainer.embedder import BusEmbedder
from trainer.fairslots import FairSlots
from trainer.fitting import FitConfig
from trainer.heads import ObjectStoreHeads
from trainer.service import RefitOutcome, Trainer


async def _run_in_turns(slots: FairSlots, arrivals: list[str]) -> list[str]:
    """Each arrival (an account name) takes a slot in that order and holds it for a moment; the order served."""
    served: list[str] = []

    async def one(account: str) -> None:
        async with slots.hold(account):
            served.append(account)
            await asyncio.sleep(0.01)

    tasks = []
    for account in arrivals:
        tasks.append(asyncio.create_task(one(account)))
        await asyncio.sleep(0)  # queued in arrival order
    await asyncio.gather(*tasks)
    return served


async def test_slots_go_round_the_accounts() -> None:
    served = await _run_in_turns(FairSlots(1), ["a"] * 6 + ["b", "c", "c"])
    # a held the slot first; then one turn each: b's one dataset waits for one of a's, not five.
    assert served == ["a", "a", "b", "c", "a", "c", "a", "a", "a"]
    assert await _run_in_turns(FairSlots(2), ["a"] * 4 + ["b"]) == ["a", "a", "a", "b", "a"]


async def test_a_semaphore_serves_in_arrival_order() -> None:
    """What the consumer used before: b waited for all of a's datasets."""
    slots = asyncio.Semaphore(1)
    served: list[str] = []

    async def one(account: str) -> None:
        async with slots:
            served.append(account)
            await asyncio.sleep(0.01)

    tasks = []
    for account in ["a"] * 6 + ["b"]:
        tasks.append(asyncio.create_task(one(account)))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert served == ["a"] * 6 + ["b"]


async def test_a_cancelled_waiter_loses_no_slot() -> None:
    slots = FairSlots(1)
    async with slots.hold("a"):
        waiter = asyncio.create_task(_run_in_turns(slots, ["b"]))
        await asyncio.sleep(0.01)
        assert slots.waiting == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert slots.waiting == 0
    assert slots.busy == 0
    assert await _run_in_turns(slots, ["c", "d"]) == ["c", "d"]
    # Handed the slot just as it is cancelled: it passes the slot on.
    async with slots.hold("a"):
        handed = asyncio.create_task(_run_in_turns(slots, ["b"]))
        await asyncio.sleep(0.01)
    handed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handed
    assert slots.busy == 0 and slots.waiting == 0
    with pytest.raises(ValueError):
        FairSlots(0)


async def _datasets(sessions: async_sessionmaker[AsyncSession], count: int) -> list[int]:
    """One account with ``count`` small text datasets (two tags, three reports each)."""
    ids = []
    async with sessions.begin() as s:
        account = Account(name=f"acc-{uuid.uuid4().hex[:6]}")
        s.add(account)
        await s.flush()
        for d in range(count):
            dataset = Dataset(account_id=account.id, name=f"d{d}", title="t", kind="text")
            s.add(dataset)
            await s.flush()
            tags = [Tag(dataset_id=dataset.id, title=g) for g in GROUPS[:2]]
            s.add_all(tags)
            await s.flush()
            for i in range(6):
                text = f"{GROUPS[i % 2]} text {i} of {d}"
                item = DataItem(dataset_id=dataset.id, kind="text", content=text,
                                content_hash=hashlib.sha256(text.encode()).hexdigest())
                s.add(item)
                await s.flush()
                s.add(Report(dataset_id=dataset.id, item_id=item.id, tag_id=tags[i % 2].id, positive=True))
            ids.append(dataset.id)
    return ids


class Recording(Trainer):
    """The real trainer, noting the order in which refits start."""

    started: list[int]

    async def refit(self, dataset_id: int, *, force: bool = False) -> RefitOutcome:
        self.started.append(dataset_id)
        return await super().refit(dataset_id, force=force)


async def test_one_accounts_burst_does_not_starve_another(
        bus: Bus, sessions: async_sessionmaker[AsyncSession], text_model: TextModel, make_consumer: Any) -> None:
    burst = await _datasets(sessions, 30)
    [single] = await _datasets(sessions, 1)
    trainer = Recording(sessions, BusEmbedder(bus), ObjectStoreHeads(bus.js), config=FitConfig(cv_folds=2))
    trainer.started = []
    for dataset_id in [*burst, single]:  # account A's 30 train requests, then account B's one
        await bus.publish_event(train_subject(dataset_id), TrainRequest(dataset_id=dataset_id),
                                msg_id=uuid.uuid4().hex)
    await make_consumer(trainer=trainer, concurrency=1)
    await wait_state(sessions, single, {"trained"}, timeout_s=60)
    position = trainer.started.index(single)
    # B's refit started after at most two of A's (the one holding the slot, and one whose turn came first),
    # with most of A's backlog still waiting; in arrival order it would have been the 31st.
    assert position <= 2, trainer.started
    for dataset_id in burst:  # and A's backlog still drains, each refitted once
        await wait_state(sessions, dataset_id, {"trained"}, timeout_s=120)
    assert sorted(trainer.started) == sorted([*burst, single])
