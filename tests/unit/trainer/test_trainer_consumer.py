"""The trainer's consumer end to end: real Postgres, real JetStream, test responders on the model subjects."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import uuid
from typing import Any

import nats.js.errors
import numpy as np
import pytest
from nats.aio.msg import Msg
from PIL import Image
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelkit.heads import Head, load_head, tag_vectors
from modelkit.metrics import create_metrics
from shared.bus import Bus
from shared.db.models import Account, DataItem, Dataset, Embedding, HeadVersion, Report, Tag
from shared.schemas.events import ReportEvent, TrainRequest
from shared.schemas.inference import ModelInfoReply, ModelInfoRequest, TagRef
from shared.schemas.media import EmbedImagesReply, EmbedImagesRequest, ImageEmbedding
from shared.subjects import (
    BLOBS_BUCKET,
    EVENTS_STREAM,
    IMAGE_MODEL_INFO,
    VISION_EMBED,
    report_subject,
    train_subject,
)
from tests.unit.trainer.helpers import MODEL_ID, Responder, embed_one, seed, wait_settled, wait_state
from trainer.fitting import FitConfig, fit_head
from trainer.fitting import Report as FitReport
from trainer.heads import ObjectStoreHeads


async def recompute(sessions: async_sessionmaker[AsyncSession], dataset_id: int) -> tuple[Any, list[int]]:
    """The fit the trainer should have made, from the reports in the database and our own embeddings."""
    async with sessions() as s:
        rows = (await s.execute(select(Report.item_id, Report.tag_id, Report.positive, DataItem.content)
                                .join(DataItem, DataItem.id == Report.item_id)
                                .where(Report.dataset_id == dataset_id))).all()
        tag_ids = list((await s.execute(select(Tag.id).where(Tag.dataset_id == dataset_id).order_by(Tag.id)))
                       .scalars())
        active = set((await s.execute(select(Tag.id).where(Tag.dataset_id == dataset_id, Tag.active))).scalars())
    items = sorted({r.item_id for r in rows})
    content = {r.item_id: r.content for r in rows}
    matrix = np.stack([embed_one(content[i]) for i in items])
    reports = [FitReport(items.index(r.item_id), r.tag_id, r.positive) for r in rows]
    result = fit_head(matrix, reports, tag_ids, FitConfig(cv_folds=3))
    return result, sorted(active)


async def terminations(bus: Bus, durable: str) -> asyncio.Queue[dict[str, Any]]:
    """The server's own record of each term() on ``durable``: advisories naming the stream sequence."""
    terminated: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_terminated(msg: Msg) -> None:
        await terminated.put(json.loads(msg.data))

    await bus.nc.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{EVENTS_STREAM}.{durable}",
                           cb=on_terminated)
    await bus.nc.flush()
    return terminated


async def test_train_request_fits_evaluates_and_stores_head(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], start_responder: Responder, make_consumer: Any,
) -> None:
    await start_responder()
    dataset_id, tags = await seed(sessions)
    await make_consumer()
    await bus.publish_event(train_subject(dataset_id), TrainRequest(dataset_id=dataset_id), msg_id=uuid.uuid4().hex)

    dataset = await wait_state(sessions, dataset_id, {"trained", "failed"})
    assert dataset.state == "trained", dataset.state_reason
    assert dataset.head_version == 1 and dataset.model_id == MODEL_ID and dataset.trained_at is not None

    result, active = await recompute(sessions, dataset_id)
    assert dataset.evaluation == result.dataset_evaluation(set(active))
    assert all(dataset.evaluation[k] is not None for k in ("recall", "precision", "f1"))
    # Micro-average by hand over the active tags' cross-validated counts.
    counts = [t.counts for t in result.tags if t.tag_id in active and t.counts is not None]
    tp, fp, fn = (sum(getattr(c, f) for c in counts) for f in ("tp", "fp", "fn"))
    assert dataset.evaluation["precision"] == round(100 * tp / (tp + fp), 1)
    assert dataset.evaluation["recall"] == round(100 * tp / (tp + fn), 1)

    async with sessions() as s:
        stored_tags = {t.id: t for t in (await s.execute(select(Tag).where(Tag.dataset_id == dataset_id))).scalars()}
        embedded = await s.scalar(select(func.count()).select_from(Embedding).where(Embedding.model_id == MODEL_ID))
        version = (await s.execute(select(HeadVersion).where(HeadVersion.dataset_id == dataset_id))).scalar_one()
        report_count = await s.scalar(select(func.count()).select_from(Report).where(Report.dataset_id == dataset_id))
    assert embedded == 15  # every reported item, once
    assert version.version == 1 and version.report_count == report_count == 18
    for fit in result.tags:
        tag = stored_tags[fit.tag_id]
        assert tag.threshold == pytest.approx(fit.threshold, abs=1e-6)
        assert tag.evaluation == fit.evaluation
        assert tag.evaluation["f1"] is not None

    head = await load_head(bus.js, dataset_id, 1)
    assert isinstance(head, Head) and head.model_id == MODEL_ID
    assert sorted(head.tag_ids.tolist()) == sorted(tags.values())
    fresh = np.stack([embed_one("food a dish never reported"), embed_one("sport a match never reported")])
    refs = [TagRef(id=tags[g], title=g) for g in ("sport", "food")]
    rows = tag_vectors(head, fresh, refs)
    assert rows[0][0].id == tags["food"] and rows[1][0].id == tags["sport"]


async def test_report_burst_is_debounced_into_one_refit(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], start_responder: Responder, make_consumer: Any,
) -> None:
    await start_responder()
    dataset_id, tags = await seed(sessions)
    registry = CollectorRegistry()
    consumer = await make_consumer(debounce_s=0.8, metrics=create_metrics(registry))
    for n in range(4):
        event = ReportEvent(dataset_id=dataset_id, item_id=n + 1, tag_id=tags["sport"], positive=True, report_id=n)
        await bus.publish_event(report_subject(dataset_id), event, msg_id=uuid.uuid4().hex)
    dataset = await wait_state(sessions, dataset_id, {"trained", "failed"})
    assert dataset.state == "trained"
    await wait_settled(bus, consumer.durable)
    # What /metrics shows: one fit for the four events.
    assert registry.get_sample_value("kashf_training_runs_total", {"outcome": "trained"}) == 1
    assert (registry.get_sample_value("kashf_training_seconds_sum") or 0) > 0
    async with sessions() as s:
        versions = await s.scalar(select(func.count()).select_from(HeadVersion)
                                  .where(HeadVersion.dataset_id == dataset_id))
    assert versions == 1 and dataset.head_version == 1


async def test_poison_message_is_terminated_not_retried(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], start_responder: Responder, make_consumer: Any,
) -> None:
    await start_responder()
    dataset_id, _ = await seed(sessions)
    durable = f"trainer-poison-{uuid.uuid4().hex[:8]}"
    terminated = await terminations(bus, durable)
    registry = CollectorRegistry()
    await make_consumer(ack_wait_s=1.0, durable=durable, metrics=create_metrics(registry))
    poison = await bus.js.publish(train_subject(dataset_id), b"{not json", headers={"Nats-Msg-Id": uuid.uuid4().hex})
    await bus.publish_event(train_subject(dataset_id), TrainRequest(dataset_id=dataset_id), msg_id=uuid.uuid4().hex)
    advisory = await asyncio.wait_for(terminated.get(), 10)
    assert advisory["stream_seq"] == poison.seq and advisory["deliveries"] == 1
    dataset = await wait_state(sessions, dataset_id, {"trained", "failed"})
    assert dataset.state == "trained"
    await wait_settled(bus, durable)
    info = await bus.js.consumer_info(EVENTS_STREAM, durable)
    assert info.num_redelivered == 0
    assert registry.get_sample_value("kashf_training_runs_total", {"outcome": "trained"}) == 1


async def test_missing_embedder_is_retried_then_succeeds(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], start_responder: Responder, make_consumer: Any,
) -> None:
    dataset_id, _ = await seed(sessions)
    await make_consumer()
    await bus.publish_event(train_subject(dataset_id), TrainRequest(dataset_id=dataset_id), msg_id=uuid.uuid4().hex)
    waiting = await wait_state(sessions, dataset_id, {"waiting", "failed", "trained"})
    assert waiting.state == "waiting"
    assert waiting.state_reason is not None and "retrying" in waiting.state_reason
    await start_responder()
    dataset = await wait_state(sessions, dataset_id, {"trained", "failed"})
    assert dataset.state == "trained" and dataset.head_version == 1


async def test_a_refit_that_raises_a_bug_fails_the_dataset_and_terms_its_events(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], start_responder: Responder, make_consumer: Any,
) -> None:
    await start_responder()
    dataset_id, _ = await seed(sessions)
    durable = f"trainer-bug-{uuid.uuid4().hex[:8]}"
    terminated = await terminations(bus, durable)

    class BrokenHeads(ObjectStoreHeads):
        async def put(self, dataset_id: int, head: Head) -> str:
            raise ValueError("a bug in storing heads")

    await make_consumer(durable=durable, heads=BrokenHeads(bus.js))
    await bus.publish_event(train_subject(dataset_id), TrainRequest(dataset_id=dataset_id), msg_id=uuid.uuid4().hex)
    failed = await wait_state(sessions, dataset_id, {"failed", "trained"})
    assert failed.state == "failed" and failed.state_reason == "ValueError: a bug in storing heads"
    # Retrying would fail the same way: the event is terminated at its first delivery, not redelivered.
    advisory = await asyncio.wait_for(terminated.get(), 10)
    assert advisory["deliveries"] == 1
    await wait_settled(bus, durable)


async def test_stop_hands_held_events_back_at_once(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], start_responder: Responder, make_consumer: Any,
) -> None:
    await start_responder()
    dataset_id, tags = await seed(sessions)
    durable = f"trainer-stop-{uuid.uuid4().hex[:8]}"

    class NoHeads(ObjectStoreHeads):
        async def put(self, dataset_id: int, head: Head) -> str:
            raise AssertionError("a stopping consumer hands its held events back instead of refitting")

    # A long debounce holds the report; a long ack_wait means only a nak brings it back soon.
    first = await make_consumer(durable=durable, debounce_s=60.0, ack_wait_s=30.0, heads=NoHeads(bus.js))
    event = ReportEvent(dataset_id=dataset_id, item_id=1, tag_id=tags["sport"], positive=True, report_id=1)
    await bus.publish_event(report_subject(dataset_id), event, msg_id=uuid.uuid4().hex)
    deadline = asyncio.get_running_loop().time() + 10
    while (await bus.js.consumer_info(EVENTS_STREAM, durable)).num_ack_pending != 1:
        assert asyncio.get_running_loop().time() < deadline, "the report was never pulled"
        await asyncio.sleep(0.05)
    await first.stop(5)
    await make_consumer(durable=durable, debounce_s=0.1, ack_wait_s=30.0)
    dataset = await wait_state(sessions, dataset_id, {"trained", "failed"}, timeout_s=10.0)
    assert dataset.state == "trained" and dataset.head_version == 1


async def test_dataset_without_positive_reports_fails_with_reason(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], start_responder: Responder, make_consumer: Any,
) -> None:
    await start_responder()
    async with sessions.begin() as s:
        account = Account(name="lonely")
        s.add(account)
        await s.flush()
        dataset = Dataset(account_id=account.id, name="empty", title="empty", kind="text")
        s.add(dataset)
        await s.flush()
        dataset_id = dataset.id
    await make_consumer()
    await bus.publish_event(train_subject(dataset_id), TrainRequest(dataset_id=dataset_id), msg_id=uuid.uuid4().hex)
    failed = await wait_state(sessions, dataset_id, {"failed", "trained"})
    # A text dataset with two tags would be tagged from their titles (trainer.zeroshot); this one has none.
    assert failed.state == "failed" and failed.state_reason == (
        "the dataset has no reports yet, and tagging from tag titles alone needs at least 2 tags")
    assert failed.head_version is None


def _png(rgb: tuple[int, int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(rgb) + rng.normal(0, 20, size=(24, 24, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _colour_vector(data: bytes) -> np.ndarray:
    mean = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32).mean(axis=(0, 1)) / 255
    v = np.concatenate([mean, [0.5]])
    return (v / np.linalg.norm(v)).astype(np.float32)


async def test_image_dataset_embeds_through_vision_blobs(
    nats_url: str, bus: Bus, sessions: async_sessionmaker[AsyncSession], make_consumer: Any,
) -> None:
    responder = await Bus.connect(nats_url, "test-vision-responder")
    seen: list[str] = []

    async def vision_embed(request: EmbedImagesRequest) -> EmbedImagesReply:
        store = await responder.js.object_store(BLOBS_BUCKET)
        items = []
        for ref in request.images:
            # Kept bytes travel by object-store key, never inline (and no probe image asks the model id).
            assert ref.blob_key is not None and ref.data is None
            seen.append(ref.blob_key)
            data = (await store.get(ref.blob_key)).data or b""
            if data.startswith(b"corrupt"):
                items.append(ImageEmbedding(error="cannot decode", error_code="unsupported_media", error_status=415))
            else:
                items.append(ImageEmbedding(vector=base64.b64encode(_colour_vector(data).tobytes())))
        return EmbedImagesReply(model_id="test-vision@1", dim=4, items=items)

    async def vision_info(_: ModelInfoRequest) -> ModelInfoReply:
        return ModelInfoReply(model_id="test-vision@1", dim=4)

    await responder.serve(VISION_EMBED, EmbedImagesRequest, vision_embed, concurrency=2)
    await responder.serve(IMAGE_MODEL_INFO, ModelInfoRequest, vision_info, concurrency=2)
    try:
        async with sessions.begin() as s:
            account = Account(name="pictures")
            s.add(account)
            await s.flush()
            dataset = Dataset(account_id=account.id, name="iran", title="لحظه", kind="image")
            s.add(dataset)
            await s.flush()
            red, blue = Tag(dataset_id=dataset.id, title="red"), Tag(dataset_id=dataset.id, title="blue")
            s.add_all([red, blue])
            await s.flush()
            for n in range(8):
                tag, rgb = (red, (220, 30, 30)) if n % 2 else (blue, (30, 30, 220))
                data = _png(rgb, n)
                item = DataItem(dataset_id=dataset.id, kind="image", media=data, media_type="image/png",
                                content_hash=hashlib.sha256(data).hexdigest())
                s.add(item)
                await s.flush()
                s.add(Report(dataset_id=dataset.id, item_id=item.id, tag_id=tag.id, positive=True))
            # An unreadable image is left out of the fit instead of failing the dataset.
            broken = DataItem(dataset_id=dataset.id, kind="image", media=b"corrupt bytes", media_type="image/png",
                              content_hash="0" * 64)
            s.add(broken)
            await s.flush()
            s.add(Report(dataset_id=dataset.id, item_id=broken.id, tag_id=red.id, positive=True))
            dataset_id, red_id = dataset.id, red.id
        await make_consumer()
        await bus.publish_event(train_subject(dataset_id), TrainRequest(dataset_id=dataset_id),
                                msg_id=uuid.uuid4().hex)
        dataset_row = await wait_state(sessions, dataset_id, {"trained", "failed"})
        assert dataset_row.state == "trained", dataset_row.state_reason
        assert dataset_row.model_id == "test-vision@1"
        head = await load_head(bus.js, dataset_id, 1)
        rows = tag_vectors(head, _colour_vector(_png((200, 40, 40), 99))[None, :],
                           [TagRef(id=red_id, title="red")])
        assert rows[0][0].id == red_id
        assert len(seen) == 9  # every kept image went to the vision service
        store = await bus.js.object_store(BLOBS_BUCKET)
        for key in seen:  # and its copy in the blob store was deleted once embedded
            with pytest.raises(nats.js.errors.ObjectNotFoundError):
                await store.get_info(key)
        async with sessions() as s:
            embedded = await s.scalar(select(func.count()).select_from(Embedding)
                                      .where(Embedding.model_id == "test-vision@1"))
        assert embedded == 8
    finally:
        await responder.close(5)
