"""Head retention: prune_heads deletes exactly the versions older than the live one's kept predecessors."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import nats.js.errors
import numpy as np
import pytest

from modelkit.heads import Head, object_name, prune_heads, store_head
from shared import subjects
from shared.bus import Bus, ensure_streams


def _head(version: int) -> Head:
    return Head(model_id="m", version=version, tag_ids=np.array([1], dtype=np.int64),
                weights=np.ones((1, 2), dtype=np.float32), bias=np.zeros(1, dtype=np.float32),
                calibration=np.array([[1.0, 0.0]], dtype=np.float32), thresholds=np.array([0.5], dtype=np.float32))


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_url, "test-head-retention")
    await ensure_streams(bus.js)
    yield bus
    await bus.close(1)


async def _stored(bus: Bus, dataset_id: int, versions: range) -> list[int]:
    """Which of ``versions`` of the dataset's heads the bucket still holds."""
    store = await bus.js.object_store(subjects.HEADS_BUCKET)
    held = []
    for version in versions:
        try:
            await store.get_info(object_name(dataset_id, version))
        except nats.js.errors.ObjectNotFoundError:  # never stored, or deleted
            continue
        held.append(version)
    return held


async def _store(bus: Bus, dataset_id: int, versions: range) -> None:
    for version in versions:
        await store_head(bus.js, dataset_id, _head(version))


def _dataset() -> int:
    return uuid.uuid4().int % 10**9


async def test_keeps_the_live_head_and_its_predecessors(bus: Bus) -> None:
    dataset, other = _dataset(), _dataset()
    await _store(bus, dataset, range(1, 7))
    await _store(bus, other, range(1, 7))
    deleted = await prune_heads(bus.js, dataset, live_version=6, keep=3)
    assert deleted == [object_name(dataset, 1), object_name(dataset, 2)]
    assert await _stored(bus, dataset, range(1, 8)) == [3, 4, 5, 6]
    assert await _stored(bus, other, range(1, 8)) == [1, 2, 3, 4, 5, 6]  # another dataset's are not touched
    await store_head(bus.js, dataset, _head(7))
    assert await prune_heads(bus.js, dataset, live_version=7, keep=3) == [object_name(dataset, 3)]
    assert await _stored(bus, dataset, range(1, 8)) == [4, 5, 6, 7]
    assert await prune_heads(bus.js, dataset, live_version=7, keep=3) == []  # nothing left to delete


async def test_finishes_what_an_interrupted_prune_left(bus: Bus) -> None:
    dataset = _dataset()
    await _store(bus, dataset, range(1, 9))
    store = await bus.js.object_store(subjects.HEADS_BUCKET)
    for version in (1, 2):  # a prune that stopped after deleting the two oldest
        await store.delete(object_name(dataset, version))
    deleted = await prune_heads(bus.js, dataset, live_version=8, keep=3)
    assert deleted == [object_name(dataset, 3), object_name(dataset, 4)]
    assert await _stored(bus, dataset, range(1, 9)) == [5, 6, 7, 8]


async def test_never_touches_versions_above_the_live_one(bus: Bus) -> None:
    dataset = _dataset()
    await _store(bus, dataset, range(1, 6))
    assert await prune_heads(bus.js, dataset, live_version=3, keep=1) == [object_name(dataset, 1)]
    assert await _stored(bus, dataset, range(1, 6)) == [2, 3, 4, 5]
    assert await prune_heads(bus.js, dataset, live_version=5, keep=0) == [
        object_name(dataset, v) for v in (2, 3, 4)]
    assert await _stored(bus, dataset, range(1, 6)) == [5]
