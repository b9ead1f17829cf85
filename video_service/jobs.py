"""Asynchronous video jobs: video_service's worker on the job queue (``shared.bus.video_jobs``).

Per job: mark the record ``running``, tag each video (no synchronous length limit), then write ``done``
(or ``failed``) with the result. The pull worker (``shared.bus.pull``) holds the message meanwhile and
settles it: ack, a delayed retry of a transient failure until ``max_deliver``, or term.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any, Protocol

import structlog
from nats.aio.client import Client as NATS

from shared.bus.pull import Delivery, PullConfig, PullWorker
from shared.bus.video_jobs import VideoJobStore
from shared.errors import KashfError
from shared.schemas.media import TagVideoRequest
from shared.schemas.video_jobs import (
    JobError,
    JobState,
    VideoJobItem,
    VideoJobOutcome,
    VideoJobRecord,
    VideoJobRequest,
    now_s,
)
from shared.subjects import VIDEO_JOBS_DURABLE
from video_service.service import VideoService

log = structlog.get_logger(__name__)


def job_error(exc: BaseException) -> JobError:
    """The error as a client may see it: never a stack trace or an internal message."""
    if isinstance(exc, KashfError):
        return JobError(error=exc.error_code, detail=exc.detail, status=exc.status)
    return JobError(error="internal", detail="internal error while analysing the video", status=500)


class Uploads(Protocol):
    """Removes a finished job's uploads (best effort; the bucket's TTL is the fallback)."""

    async def delete(self, keys: Iterable[str]) -> None: ...


class VideoJobRunner:
    """Runs jobs, ``workers`` at once per replica; a job is pulled only when a worker is free."""

    def __init__(
        self,
        nc: NATS,
        service: VideoService,
        uploads: Uploads,
        store: VideoJobStore,
        *,
        workers: int = 1,
        ack_wait_s: float = 60.0,
        max_deliver: int = 3,
        retry_delay_s: float = 5.0,
        durable: str = VIDEO_JOBS_DURABLE,
    ) -> None:
        self.service = service
        self.uploads = uploads
        self.store = store
        config = PullConfig(
            stream=store.names.stream, durable=durable, subjects=(store.names.subject,), ack_wait_s=ack_wait_s,
            max_deliver=max_deliver, retry_delay_s=retry_delay_s, batch=1, concurrency=workers,
        )
        self.worker = PullWorker(nc, config, self._handle)

    @property
    def running(self) -> bool:
        return self.worker.running

    async def start(self) -> None:
        await self.store.ensure()
        await self.worker.start()

    async def stop(self, timeout_s: float = 20.0) -> None:
        """Stop pulling; running jobs get ``timeout_s`` to finish, then are handed back to the queue."""
        await self.worker.stop(timeout_s)

    async def _handle(self, delivery: Delivery) -> None:
        job = VideoJobRequest.model_validate_json(delivery.msg.data)
        record = await self.store.read(job.job_id)
        if record is None or record.state in ("done", "failed"):
            # Expired, or already answered before a lost ack: nothing left to do.
            log.info("video_job_skipped", job_id=job.job_id, state=record.state if record else None)
            return
        record = await self._update(record, delivery, "running")
        log.info("video_job_started", job_id=job.job_id, videos=len(job.videos), delivery=delivery.count)
        try:
            outcomes = [await self._one(job, item) for item in job.videos]
        except Exception as exc:
            await self._failed(delivery, job, record, exc)
            raise
        failed = bool(outcomes) and all(o.error is not None for o in outcomes)
        await self._update(record, delivery, "failed" if failed else "done", result=outcomes,
                           error=outcomes[0].error if failed else None)
        log.info("video_job_finished", job_id=job.job_id, state="failed" if failed else "done",
                 frames=sum(len(o.frames) for o in outcomes))
        await self._delete_uploads(job)

    async def _one(self, job: VideoJobRequest, item: VideoJobItem) -> VideoJobOutcome:
        """One video; its own media problem is its outcome, transient failures fail the attempt."""
        request = TagVideoRequest(
            head=job.head, tags=job.tags, video=item.video,
            every_ms=job.every_ms, duration_s=job.duration_s, min_frame_diff=job.min_frame_diff,
            top_k=job.top_k, min_probability=job.min_probability,
        )
        try:
            reply = await self.service.run(request, sync=False)
        except KashfError as exc:
            if self.worker.config.is_transient(exc):
                raise
            return VideoJobOutcome(key=item.key, value=item.value, error=job_error(exc))
        return VideoJobOutcome(key=item.key, value=item.value, frames=reply.frames)

    async def _failed(self, delivery: Delivery, job: VideoJobRequest, record: VideoJobRecord, exc: Exception) -> None:
        """Record the failed attempt; the worker then retries the message or terminates it."""
        error = job_error(exc)
        if delivery.will_retry(exc):
            with contextlib.suppress(KashfError):  # the retry writes the record again anyway
                await self._update(record, delivery, "queued", error=error)
            return
        log.info("video_job_failed", job_id=job.job_id, error=error.detail, delivery=delivery.count)
        # Unrecorded (the store away), the failure propagates instead: the worker retries it if it may.
        await self._update(record, delivery, "failed", error=error)
        await self._delete_uploads(job)

    async def _update(self, record: VideoJobRecord, delivery: Delivery, state: JobState,
                      **fields: Any) -> VideoJobRecord:
        record = record.model_copy(update={
            "state": state, "attempts": delivery.count, "updated_at": now_s(), "error": None, **fields,
        })
        await self.store.write(record)
        return record

    async def _delete_uploads(self, job: VideoJobRequest) -> None:
        keys = [i.video.blob_key for i in job.videos if i.video.blob_key]
        if keys:
            await self.uploads.delete(keys)
