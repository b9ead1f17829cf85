"""Heads: the blob round-trip, which tags a row gets, and the services' cache over a real object store."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from modelkit.heads import Head, HeadCache, load_head, store_head, tag_vectors
from modelkit.metrics import create_metrics
from shared import subjects
from shared.bus import Bus, ensure_streams
from shared.errors import Internal, Unavailable
from shared.schemas.inference import UNKNOWN_TAG_ID, UNKNOWN_TITLE, HeadRef, TagRef

SPORT = TagRef(id=11, title="ورزش")
FOOD = TagRef(id=12, title="غذا")
ART = TagRef(id=13, title="هنر")


def _head(version: int = 1, dim: int = 4) -> Head:
    # Tag 11 fires on axis 0, tag 12 on axis 1, tag 13 on axis 2; steep calibration.
    return Head(
        model_id="test-model@1",
        version=version,
        tag_ids=np.array([11, 12, 13], dtype=np.int64),
        weights=np.eye(3, dim, dtype=np.float32),
        bias=np.zeros(3, dtype=np.float32),
        calibration=np.array([[10.0, -5.0], [10.0, -5.0], [10.0, -5.0]], dtype=np.float32),
        thresholds=np.array([0.5, 0.5, 0.9], dtype=np.float32),
    )


def test_head_round_trips_through_bytes() -> None:
    head = _head(version=7)
    back = Head.from_bytes(head.to_bytes())
    assert back.model_id == "test-model@1"
    assert back.version == 7
    assert back.tag_ids.tolist() == [11, 12, 13]
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(back.probabilities(x), head.probabilities(x), rtol=1e-6)
    np.testing.assert_array_equal(back.thresholds, head.thresholds)


def test_garbage_blob_is_an_internal_error() -> None:
    with pytest.raises(Internal):
        Head.from_bytes(b"definitely not an npz archive")


def test_probabilities_follow_platt_formula() -> None:
    head = _head()
    x = np.array([[0.8, 0.1, 0.0, 0.0]], dtype=np.float32)
    expected = 1 / (1 + np.exp(-(10 * np.array([0.8, 0.1, 0.0]) - 5)))
    np.testing.assert_allclose(head.probabilities(x)[0], expected, rtol=1e-5)


def test_tags_highest_first_rounded_to_two_decimals() -> None:
    rows = tag_vectors(_head(), np.array([[0.62, 0.9, 0.0, 0.0]]), [SPORT, FOOD, ART])
    assert [t.id for t in rows[0]] == [12, 11]
    p_food = 1 / (1 + np.exp(-(10 * 0.9 - 5)))
    p_sport = 1 / (1 + np.exp(-(10 * 0.62 - 5)))
    assert rows[0][0].probability == round(float(p_food), 2) == 0.98
    assert rows[0][1].probability == round(float(p_sport), 2) == 0.77
    assert rows[0][0].title == "غذا"


def test_inactive_tag_is_never_predicted() -> None:
    # Tag 12 is in the head and would pass, but the caller lists only the active tags.
    rows = tag_vectors(_head(), np.array([[0.0, 1.0, 0.0, 0.0]]), [SPORT, ART])
    assert [(t.id, t.title, t.probability) for t in rows[0]] == [(UNKNOWN_TAG_ID, UNKNOWN_TITLE, 1.0)]


def test_per_tag_threshold_applies() -> None:
    # Art's probability is sigmoid(10*0.6-5) = 0.73: above 0.5 but under its own threshold 0.9.
    rows = tag_vectors(_head(), np.array([[0.0, 0.0, 0.6, 0.0]]), [SPORT, FOOD, ART])
    assert rows[0][0].id == UNKNOWN_TAG_ID


def test_unknown_when_nothing_passes_and_for_untrained_dataset() -> None:
    rows = tag_vectors(_head(), np.zeros((2, 4)), [SPORT, FOOD])
    assert [[t.id for t in r] for r in rows] == [[0], [0]]
    assert tag_vectors(None, np.ones((1, 4)), [SPORT])[0][0].title == "ناآشنا"


def test_tag_missing_from_head_needs_zero_shot() -> None:
    new = TagRef(id=99, title="تازه")
    x = np.array([[0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    without = tag_vectors(_head(), x, [SPORT, new])
    assert [t.id for t in without[0]] == [0]
    zero_shot = np.array([[0.1, 0.7], [0.9, 0.2]])
    rows = tag_vectors(_head(), x, [SPORT, new], zero_shot=zero_shot)
    assert [(t.id, t.probability) for t in rows[0]] == [(99, 0.7)]
    # Sport comes from the head, not from its zero-shot column; the new tag's 0.2 stays under 0.5.
    assert [t.id for t in rows[1]] == [11]
    assert rows[1][0].probability == round(float(1 / (1 + np.exp(-5.0))), 2)
    only_zero_shot = tag_vectors(None, x, [SPORT, new], zero_shot=zero_shot)
    assert [[t.id for t in r] for r in only_zero_shot] == [[99], [11]]


@pytest.fixture
async def js_bus(nats_url: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_url, "test-heads")
    await ensure_streams(bus.js)
    yield bus
    await bus.close(5)


async def test_store_and_load_through_object_store(js_bus: Bus) -> None:
    dataset_id = int(uuid.uuid4().int % 10**9)
    name = await store_head(js_bus.js, dataset_id, _head(version=3))
    assert name == f"dataset-{dataset_id}-v3"
    loaded = await load_head(js_bus.js, dataset_id, 3)
    assert loaded.version == 3 and loaded.tag_ids.tolist() == [11, 12, 13]


async def test_cache_loads_once_and_evicts_least_recent(js_bus: Bus) -> None:
    dataset_id = int(uuid.uuid4().int % 10**9)
    for version in (1, 2):
        await store_head(js_bus.js, dataset_id, _head(version=version))
    registry = CollectorRegistry()
    cache = HeadCache(js_bus.js, max_entries=1, metrics=create_metrics(registry))

    def loads() -> float | None:  # object-store reads, as /metrics shows them
        return registry.get_sample_value("kashf_head_loads_total")

    assert await cache.get(HeadRef(dataset_id=dataset_id, version=None)) is None
    first = await asyncio.gather(*(cache.get(HeadRef(dataset_id=dataset_id, version=1)) for _ in range(5)))
    assert all(h is not None and h.version == 1 for h in first)
    assert loads() == 1  # five concurrent gets, one object-store read
    await cache.get(HeadRef(dataset_id=dataset_id, version=1))
    assert loads() == 1
    second = await cache.get(HeadRef(dataset_id=dataset_id, version=2))
    assert second is not None and second.version == 2
    assert len(cache) == 1 and loads() == 2
    await cache.get(HeadRef(dataset_id=dataset_id, version=1))  # evicted: read again
    assert loads() == 3


async def test_missing_head_is_unavailable_and_not_cached(js_bus: Bus) -> None:
    cache = HeadCache(js_bus.js)
    ref = HeadRef(dataset_id=424242, version=9)
    with pytest.raises(Unavailable, match="not found"):
        await cache.get(ref)
    await store_head(js_bus.js, 424242, _head(version=9))
    head = await cache.get(ref)
    assert head is not None and head.version == 9


def _big_head(version: int, tags: int = 200, dim: int = 1280) -> Head:
    """An image dataset's head of 200 tags: a 1 MB blob, eight 128 KiB chunks in the object store."""
    rng = np.random.default_rng(version)
    return Head(model_id="test-model@1", version=version, tag_ids=np.arange(1, tags + 1, dtype=np.int64),
                weights=rng.standard_normal((tags, dim)).astype(np.float32), bias=np.zeros(tags, np.float32),
                calibration=np.tile(np.array([1.0, 0.0], np.float32), (tags, 1)),
                thresholds=np.full(tags, 0.5, np.float32))


async def test_a_head_of_many_chunks_loads_whole_and_parses_off_the_event_loop(
    js_bus: Bus, monkeypatch: pytest.MonkeyPatch,
) -> None:
    dataset_id = int(uuid.uuid4().int % 10**9)
    head = _big_head(version=1)
    assert len(head.to_bytes()) > 7 * 128 * 1024
    await store_head(js_bus.js, dataset_id, head)
    parsed_on: list[int] = []
    parse = Head.from_bytes

    def recording(data: bytes) -> Head:
        parsed_on.append(threading.get_ident())
        return parse(data)

    monkeypatch.setattr(Head, "from_bytes", recording)
    loaded = await HeadCache(js_bus.js).get(HeadRef(dataset_id=dataset_id, version=1))
    assert loaded is not None
    np.testing.assert_array_equal(loaded.weights, head.weights)
    np.testing.assert_array_equal(loaded.tag_ids, head.tag_ids)
    assert parsed_on and threading.get_ident() not in parsed_on  # never on the loop's thread


async def test_cold_loads_leave_no_consumer_behind(js_bus: Bus) -> None:
    """An object store ``get`` leaves a consumer for about 5 s, and the server refuses past 1,000: loads read
    chunk by chunk instead, so any number of datasets can be loaded at once."""
    first = int(uuid.uuid4().int % 10**9)
    for offset in range(20):
        await store_head(js_bus.js, first + offset, _head(version=1))
    cache = HeadCache(js_bus.js)
    heads = await asyncio.gather(*(cache.get(HeadRef(dataset_id=first + o, version=1)) for o in range(20)))
    assert all(h is not None and h.version == 1 for h in heads)
    info = await js_bus.js.stream_info(f"OBJ_{subjects.HEADS_BUCKET}")
    assert info.state.consumer_count == 0


async def test_a_head_whose_chunks_do_not_match_its_digest_is_an_internal_error(js_bus: Bus) -> None:
    dataset_id = int(uuid.uuid4().int % 10**9)
    await store_head(js_bus.js, dataset_id, _head(version=1))
    store = await js_bus.js.object_store(subjects.HEADS_BUCKET)
    info = await store.get_info(f"dataset-{dataset_id}-v1")
    # The object's chunk replaced by other bytes: what is read no longer matches the metadata.
    chunks = f"$O.{subjects.HEADS_BUCKET}.C.{info.nuid}"
    await js_bus.js.purge_stream(f"OBJ_{subjects.HEADS_BUCKET}", subject=chunks)
    await js_bus.js.publish(chunks, b"tampered")
    with pytest.raises(Internal, match="corrupt"):
        await load_head(js_bus.js, dataset_id, 1)
