"""The video-job store the gateway and video_service share, on a real nats-server (fresh names per test)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from shared.bus import Bus
from shared.bus.video_jobs import VideoJobNames, VideoJobStore
from shared.errors import Overloaded, TooLarge
from shared.schemas.inference import HeadRef, TagRef
from shared.schemas.media import MediaInput
from shared.schemas.video_jobs import (
    VideoJobItem,
    VideoJobOutcome,
    VideoJobRecord,
    VideoJobRequest,
    new_job_id,
    now_s,
)


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_url, "test-video-job-store")
    yield bus
    await bus.close(5)


@pytest.fixture
def names() -> VideoJobNames:
    token = secrets.token_hex(6)
    return VideoJobNames(stream=f"TEST_VJ_{token}", subject=f"test.vj.{token}", bucket=f"test-vj-{token}")


def job_and_record(urls: list[str]) -> tuple[VideoJobRequest, VideoJobRecord]:
    job_id, now = new_job_id(), now_s()
    job = VideoJobRequest(
        job_id=job_id, account_id=7, head=HeadRef(dataset_id=1, version=1), tags=[TagRef(id=1, title="t")],
        videos=[VideoJobItem(key="video_url", value=u, video=MediaInput(url=u)) for u in urls], every_ms=500,
    )
    record = VideoJobRecord(job_id=job_id, account_id=7, state="queued", created_at=now, updated_at=now,
                            videos=len(urls))
    return job, record


async def test_submit_declares_the_queue_records_and_queues_the_job(bus: Bus, names: VideoJobNames) -> None:
    store = VideoJobStore(bus.js, names)
    job, record = job_and_record(["https://example.org/a.mp4"])
    assert await store.read(record.job_id) is None  # nothing declared yet, and reading declares nothing
    with pytest.raises(nats.js.errors.BucketNotFoundError):
        await bus.js.key_value(names.bucket)

    await store.submit(record, job)  # no stream yet: submit declares it (no video_service has started)
    # Another client (the video service) sees the record and pulls the job.
    assert await VideoJobStore(bus.js, names).read(record.job_id) == record
    await bus.js.add_consumer(names.stream, ConsumerConfig(durable_name="w", ack_policy=AckPolicy.EXPLICIT))
    sub = await bus.js.pull_subscribe_bind(durable="w", stream=names.stream)
    [msg] = await sub.fetch(1, timeout=5)
    assert VideoJobRequest.model_validate_json(msg.data) == job
    assert (msg.headers or {})["Nats-Msg-Id"] == job.job_id  # a resubmission within minutes is dropped
    await msg.ack()


async def test_write_replaces_the_record(bus: Bus, names: VideoJobNames) -> None:
    store = VideoJobStore(bus.js, names)
    await store.ensure()
    _, record = job_and_record(["https://example.org/a.mp4"])
    await store.write(record)
    done = record.model_copy(update={"state": "done", "attempts": 1, "result": [
        VideoJobOutcome(key="video_url", value="https://example.org/a.mp4")]})
    await store.write(done)
    assert await store.read(record.job_id) == done
    assert await store.read(new_job_id()) is None


async def test_a_job_that_cannot_be_queued_leaves_no_record(bus: Bus, names: VideoJobNames) -> None:
    store = VideoJobStore(bus.js, names)
    await store.ensure()
    job, record = job_and_record([f"https://example.org/{'x' * 1000}/{i}.mp4" for i in range(2000)])
    with pytest.raises(TooLarge, match="max payload"):
        await store.submit(record, job)
    assert await store.read(record.job_id) is None


async def test_a_full_queue_is_overloaded_and_leaves_no_record(bus: Bus, names: VideoJobNames) -> None:
    store = VideoJobStore(bus.js, VideoJobNames(names.stream, names.subject, names.bucket, max_msgs=1))
    first, second = job_and_record(["https://example.org/a.mp4"]), job_and_record(["https://example.org/b.mp4"])
    await store.submit(first[1], first[0])
    with pytest.raises(Overloaded, match="too many video jobs queued"):
        await store.submit(second[1], second[0])
    assert await store.read(second[1].job_id) is None
    assert await store.read(first[1].job_id) == first[1]
