"""The text service over a real NATS server, with a tiny ONNX model built by the test."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from modelkit.heads import Head, store_head
from modelkit.onnx.text import TextEncoder
from modelkit.runtime import Readiness, stop_service
from shared.bus import Bus
from shared.errors import KashfError
from shared.schemas.inference import (
    EmbedReply,
    EmbedTextsRequest,
    HeadRef,
    ModelInfoReply,
    ModelInfoRequest,
    TagRef,
    TagReply,
    TagTextsRequest,
)
from shared.settings import TextServiceSettings
from shared.subjects import TEXT_EMBED, TEXT_MODEL_INFO, TEXT_TAG
from shared.textnorm import normalize_text
from tests.unit.text.texts import BUY, CORPUS, OTHER, POOR, VARIANTS
from text_service.main import setup
from text_service.model import Encoder

BUY_TAG = TagRef(id=39, title="توصیه خرید")
POOR_TAG = TagRef(id=40, title="کیفیت پایین")


class GatedEncoder:
    """The tiny encoder behind a gate, to hold a model call open while the test fills the queue."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dim(self) -> int:
        return self.inner.dim

    def encode(self, texts: list[str]) -> np.ndarray:
        self.entered.set()
        self.gate.wait(10)
        return self.inner.encode(texts)

    def warmup(self) -> None:
        self.inner.warmup()


Start = Callable[..., Awaitable[Bus]]


@pytest.fixture
async def start_service(nats_url: str, tiny_models_dir: Path) -> AsyncIterator[Start]:
    """Start the text service in this process (setup as `python -m text_service` runs it); a client bus."""
    running: list[tuple[Bus, Readiness]] = []
    clients: list[Bus] = []

    async def start(encoder: Encoder | None = None, **overrides: object) -> Bus:
        settings = TextServiceSettings(  # type: ignore[call-arg]
            nats_url=nats_url, models_dir=tiny_models_dir, text_model="text/tiny", device="cpu",
            **overrides,
        )
        bus = await Bus.connect(nats_url, "text_service")
        running.append((bus, await setup(settings, bus, encoder)))
        client = await Bus.connect(nats_url, "test-client")
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()
    for bus, readiness in running:
        await stop_service(bus, readiness, 10.0)


@pytest.fixture(scope="module")
def encoder(tiny_models_dir: Path) -> TextEncoder:
    return TextEncoder(tiny_models_dir / "text" / "tiny", device="cpu")


def expected(encoder: TextEncoder, texts: list[str]) -> np.ndarray:
    """What the service must answer: the model's vectors of the normalised texts."""
    return encoder.encode([normalize_text(t) for t in texts])


async def embed(bus: Bus, texts: list[str]) -> EmbedReply:
    return await bus.request(TEXT_EMBED, EmbedTextsRequest(texts=texts), EmbedReply)


async def test_embed_returns_unit_vectors_in_request_order(
        start_service: Start, encoder: TextEncoder) -> None:
    client = await start_service()
    reply = await embed(client, CORPUS)
    vectors = reply.array()
    assert reply.model_id == encoder.model_id
    assert vectors.shape == (len(CORPUS), encoder.dim) == (len(CORPUS), reply.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # row i is text i's own vector, whatever batches the service merged it into
    np.testing.assert_allclose(vectors, expected(encoder, CORPUS), atol=1e-5)


async def test_model_info_names_the_model_its_vectors_come_from(
        start_service: Start, encoder: TextEncoder) -> None:
    client = await start_service()
    info = await client.request(TEXT_MODEL_INFO, ModelInfoRequest(), ModelInfoReply)
    reply = await embed(client, CORPUS[:1])
    assert (info.model_id, info.dim) == (encoder.model_id, encoder.dim) == (reply.model_id, reply.dim)


async def test_concurrent_clients_each_get_their_own_vectors(
        start_service: Start, encoder: TextEncoder) -> None:
    client = await start_service(max_batch=8, max_wait_ms=20)
    replies = await asyncio.gather(*(embed(client, [t]) for t in CORPUS))
    got = np.vstack([r.array() for r in replies])
    np.testing.assert_allclose(got, expected(encoder, CORPUS), atol=1e-5)


async def test_spelling_variants_embed_identically(start_service: Start) -> None:
    client = await start_service()
    canonical = (await embed(client, [c for c, _ in VARIANTS])).array()
    variants = (await embed(client, [v for _, v in VARIANTS])).array()
    np.testing.assert_allclose(variants, canonical, atol=1e-6)


def centroid_head(model_id: str, version: int, classes: dict[int, np.ndarray]) -> Head:
    """A head scoring cosine to each class's centroid: p = sigmoid(12 * cos - 6)."""
    ids = sorted(classes)
    w = np.stack([classes[i].mean(axis=0) / np.linalg.norm(classes[i].mean(axis=0)) for i in ids])
    k = len(ids)
    return Head(model_id=model_id, version=version, tag_ids=np.array(ids, dtype=np.int64),
                weights=w.astype(np.float32), bias=np.zeros(k, np.float32),
                calibration=np.tile(np.array([12.0, -6.0], np.float32), (k, 1)),
                thresholds=np.full(k, 0.5, np.float32))


async def tag(bus: Bus, dataset_id: int, version: int | None, texts: list[str],
              tags: list[TagRef] | None = None) -> TagReply:
    request = TagTextsRequest(head=HeadRef(dataset_id=dataset_id, version=version),
                              tags=[BUY_TAG, POOR_TAG] if tags is None else tags, texts=texts)
    return await bus.request(TEXT_TAG, request, TagReply)


async def test_tag_with_stored_head_puts_the_right_tag_first(
        start_service: Start, encoder: TextEncoder) -> None:
    client = await start_service()
    head = centroid_head(encoder.model_id, 1, {39: expected(encoder, BUY), 40: expected(encoder, POOR)})
    await store_head(client.js, 7, head)
    # The Arabic-spelled variant of a BUY review must land on the BUY tag too.
    texts = [BUY[1], POOR[0], VARIANTS[0][1]]
    reply = await tag(client, 7, 1, texts)
    assert [item.tags[0].id for item in reply.items] == [39, 40, 39]
    assert all(0.5 <= t.probability <= 1 and t.probability == round(t.probability, 2)
               for item in reply.items for t in item.tags)
    # An inactive tag (absent from the request) is never predicted.
    only_poor = await tag(client, 7, 1, [BUY[1]], tags=[POOR_TAG])
    assert [t.id for t in only_poor.items[0].tags] == [0]


async def test_untrained_dataset_answers_unknown(start_service: Start) -> None:
    client = await start_service()
    reply = await tag(client, 8, None, [OTHER[0], BUY[0]])
    assert [[t.model_dump() for t in item.tags] for item in reply.items] == [
        [{"id": 0, "title": "ناآشنا", "probability": 1.0}]] * 2


async def test_missing_head_is_unavailable(start_service: Start) -> None:
    client = await start_service()
    with pytest.raises(KashfError) as info:
        await tag(client, 9, 3, [BUY[0]])
    assert info.value.status == 503


async def test_head_of_another_model_is_refused_with_a_retrain_hint(
        start_service: Start, encoder: TextEncoder) -> None:
    client = await start_service()
    head = centroid_head("some-other-model@abc", 1, {39: expected(encoder, BUY), 40: expected(encoder, POOR)})
    await store_head(client.js, 11, head)
    with pytest.raises(KashfError) as info:
        await tag(client, 11, 1, [BUY[0]])
    assert (info.value.status, info.value.error_code) == (503, "head_model_mismatch")
    assert "retrain" in info.value.detail


async def test_the_head_cache_holds_as_many_heads_as_kashf_head_cache_entries(
        start_service: Start, encoder: TextEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KASHF_HEAD_CACHE_ENTRIES", "1")
    client = await start_service()
    head = centroid_head(encoder.model_id, 1, {39: expected(encoder, BUY), 40: expected(encoder, POOR)})
    for dataset_id in (31, 32):
        await store_head(client.js, dataset_id, head)

    def loads() -> float:  # object-store reads, as /metrics shows them
        return REGISTRY.get_sample_value("kashf_head_loads_total") or 0.0

    before = loads()
    for dataset_id in (31, 31, 32, 31):  # one head fits: 32 pushes 31 out, so 31 is read again
        assert (await tag(client, dataset_id, 1, [BUY[0]])).items[0].tags[0].id == 39
    assert loads() - before == 3


async def test_full_queue_answers_429_at_once_and_queued_work_completes(
        start_service: Start, encoder: TextEncoder) -> None:
    gated = GatedEncoder(encoder)
    client = await start_service(gated, max_batch=2, max_wait_ms=1, max_queue=4, model_workers=1)
    first = asyncio.create_task(embed(client, CORPUS[:2]))  # held inside the model call
    await asyncio.to_thread(gated.entered.wait, 5)
    queued = asyncio.create_task(embed(client, CORPUS[2:6]))  # fills the queue
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(KashfError) as info:
        await embed(client, CORPUS[6:7])
    assert (info.value.status, info.value.error_code) == (429, "overloaded")
    assert loop.time() - start < 1.0
    gated.gate.set()
    np.testing.assert_allclose((await first).array(), expected(encoder, CORPUS[:2]), atol=1e-5)
    np.testing.assert_allclose((await queued).array(), expected(encoder, CORPUS[2:6]), atol=1e-5)


class MeetingEncoder(GatedEncoder):
    """Each model call waits until ``parties`` calls are inside at once: serial calls would time out."""

    def __init__(self, inner: Encoder, parties: int) -> None:
        super().__init__(inner)
        self.barrier = threading.Barrier(parties, timeout=5)

    def encode(self, texts: list[str]) -> np.ndarray:
        self.barrier.wait()
        return self.inner.encode(texts)


async def test_model_workers_run_that_many_model_calls_at_once(
        start_service: Start, encoder: TextEncoder) -> None:
    client = await start_service(MeetingEncoder(encoder, 2), max_batch=2, max_wait_ms=0, model_workers=2)
    first = asyncio.create_task(embed(client, CORPUS[:2]))
    second = asyncio.create_task(embed(client, CORPUS[2:4]))
    np.testing.assert_allclose((await first).array(), expected(encoder, CORPUS[:2]), atol=1e-5)
    np.testing.assert_allclose((await second).array(), expected(encoder, CORPUS[2:4]), atol=1e-5)


async def test_request_larger_than_the_queue_is_413(start_service: Start) -> None:
    client = await start_service(max_queue=4)
    with pytest.raises(KashfError) as info:
        await embed(client, CORPUS[:5])
    assert info.value.status == 413
