"""The video job runner's retry policy on a real nats-server, with a stand-in for the model service.

The real service runs whole jobs in test_service.py; here the stand-in fails on cue, which the real
one cannot do transiently. Each test has its own queue, bucket and durable.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from shared.bus import Bus, ensure_streams
from shared.bus.blobs import BlobStore
from shared.bus.video_jobs import VideoJobNames, VideoJobStore
from shared.errors import NotFound, Unavailable
from shared.schemas.inference import HeadRef, ScoredTag, TagRef
from shared.schemas.media import MediaInput, TagVideoReply, TagVideoRequest, VideoFrame
from shared.schemas.video_jobs import VideoJobItem, VideoJobRecord, VideoJobRequest, new_job_id, now_s
from video_service.jobs import VideoJobRunner

FRAME = VideoFrame(frame=0, time="0:00:00", tags=[ScoredTag(id=1, title="t", probability=0.9)])


class StandIn:
    """Answers ``run`` as the video service would, after the test's ``script`` for that call."""

    def __init__(self, script: Callable[[int], Awaitable[None]]) -> None:
        self.script = script
        self.calls: list[TagVideoRequest] = []

    async def run(self, request: TagVideoRequest, *, sync: bool) -> TagVideoReply:
        assert not sync
        self.calls.append(request)
        await self.script(len(self.calls))
        return TagVideoReply(model_id="m", frames=[FRAME], analysed_frames=1)


class Setup:
    def __init__(self, bus: Bus) -> None:
        token = secrets.token_hex(6)
        self.bus = bus
        names = VideoJobNames(f"TEST_JOBS_{token}", f"test.jobs.{token}", f"test-jobs-{token}")
        self.store = VideoJobStore(bus.js, names)
        self.blobs = BlobStore(bus.js)
        self.runners: list[VideoJobRunner] = []

    async def runner(self, script: Callable[[int], Awaitable[None]], **kw: Any) -> StandIn:
        service = StandIn(script)
        options: dict[str, Any] = {"ack_wait_s": 5.0, "max_deliver": 3, "retry_delay_s": 0.2, "durable": "test"}
        runner = VideoJobRunner(self.bus.nc, service, self.blobs, self.store, **(options | kw))  # type: ignore[arg-type]
        await runner.start()
        self.runners.append(runner)
        return service

    async def submit(self, blob_key: str) -> str:
        job_id, now = new_job_id(), now_s()
        job = VideoJobRequest(
            job_id=job_id, account_id=3, head=HeadRef(dataset_id=1, version=1), tags=[TagRef(id=1, title="t")],
            videos=[VideoJobItem(key="video_file", value="clip.mp4", video=MediaInput(blob_key=blob_key))],
            every_ms=1000,
        )
        await self.store.submit(
            VideoJobRecord(job_id=job_id, account_id=3, state="queued", created_at=now, updated_at=now, videos=1),
            job)
        return job_id

    async def record_when(self, job_id: str, done: Callable[[VideoJobRecord], bool]) -> VideoJobRecord:
        async with asyncio.timeout(20):
            while True:
                record = await self.store.read(job_id)
                if record is not None and done(record):
                    return record
                await asyncio.sleep(0.05)

    async def queue_empty(self) -> None:
        async with asyncio.timeout(20):
            while True:
                if not (await self.bus.js.stream_info(self.store.names.stream)).state.messages:
                    return
                await asyncio.sleep(0.05)

    async def upload_gone(self, key: str) -> bool:
        try:
            await self.blobs.get(key, max_bytes=100)
        except NotFound:
            return True
        return False

    async def upload_deleted(self, key: str) -> bool:
        """Gone within a few seconds: the runner deletes a finished job's uploads right after its record."""
        async with asyncio.timeout(10):
            while True:
                if await self.upload_gone(key):
                    return True
                await asyncio.sleep(0.05)


@pytest.fixture
async def setup(nats_url: str) -> AsyncIterator[Setup]:
    bus = await Bus.connect(nats_url, "test-video-jobs")
    made = Setup(bus)
    await made.store.ensure()
    await ensure_streams(bus.js)  # the uploads bucket
    yield made
    for runner in made.runners:
        await runner.stop(5)
    await bus.close(5)


async def test_a_transient_failure_is_recorded_then_retried_to_done(setup: Setup) -> None:
    proceed = asyncio.Event()

    async def script(call: int) -> None:
        if call == 1:
            raise Unavailable("image model busy")
        await proceed.wait()

    service = await setup.runner(script)
    key = await setup.blobs.put(b"video bytes")
    job_id = await setup.submit(key)
    waiting = await setup.record_when(job_id, lambda r: r.attempts == 1 and r.state == "queued")
    assert waiting.error is not None and waiting.error.error == "unavailable"
    assert not await setup.upload_gone(key)  # kept for the retry
    proceed.set()
    done = await setup.record_when(job_id, lambda r: r.state == "done")
    assert done.attempts == 2 and done.error is None
    assert done.result is not None and [(o.value, o.frames) for o in done.result] == [("clip.mp4", [FRAME])]
    assert [c.video.blob_key for c in service.calls] == [key, key]
    assert await setup.upload_deleted(key)


async def test_out_of_deliveries_the_job_fails_with_its_error(setup: Setup) -> None:
    async def script(call: int) -> None:
        raise Unavailable("image model away")

    service = await setup.runner(script, max_deliver=2)
    key = await setup.blobs.put(b"video bytes")
    job_id = await setup.submit(key)
    failed = await setup.record_when(job_id, lambda r: r.state == "failed")
    assert failed.attempts == 2 and len(service.calls) == 2
    assert failed.error is not None and failed.error.detail == "image model away"
    assert await setup.upload_deleted(key)


async def test_a_malformed_job_is_dropped_and_the_next_one_runs(setup: Setup) -> None:
    async def script(call: int) -> None:
        return None

    service = await setup.runner(script)
    await setup.bus.js.publish(setup.store.names.subject, b'{"job_id": 5}')
    job_id = await setup.submit(await setup.blobs.put(b"video bytes"))
    await setup.record_when(job_id, lambda r: r.state == "done")
    assert len(service.calls) == 1
    # The malformed message was terminated, not left to come back: the work queue empties.
    await setup.queue_empty()


async def test_a_job_without_a_record_is_skipped(setup: Setup) -> None:
    async def script(call: int) -> None:
        return None

    service = await setup.runner(script)
    orphan = new_job_id()  # its record expired (or was never written)
    job = VideoJobRequest(job_id=orphan, account_id=3, head=HeadRef(dataset_id=1, version=1), tags=[],
                          videos=[], every_ms=1000)
    await setup.bus.js.publish(setup.store.names.subject, job.model_dump_json().encode())
    job_id = await setup.submit(await setup.blobs.put(b"video bytes"))
    await setup.record_when(job_id, lambda r: r.state == "done")
    assert len(service.calls) == 1
    assert await setup.store.read(orphan) is None
    await setup.queue_empty()  # the orphan was acked, not left to come back
