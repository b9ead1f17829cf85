"""Asynchronous video jobs: a durable pull consumer of the KASHF_VIDEO_JOBS work queue.

Per job: mark the KV record ``running``, tag each video (no synchronous length limit), write ``done``
(or ``failed``) with the result, then ack. ``in_progress`` keeps the message during long work;
transient failures are nak'ed with a growing delay until ``max_deliver``; unparseable jobs are term'ed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.kv import KeyValue
from pydantic import ValidationError

from shared.bus import bind_pull_consumer, finish_or_cancel, unbind
from shared.errors import KashfError, Overloaded, Timeout, Unavailable
from shared.schemas.media import TagVideoRequest
from shared.schemas.video_jobs import (
    VIDEO_JOBS_BUCKET,
    VIDEO_JOBS_DURABLE,
    VIDEO_JOBS_STREAM,
    VIDEO_JOBS_SUBJECT,
    JobError,
    VideoJobItem,
    VideoJobOutcome,
    VideoJobRecord,
    VideoJobRequest,
    ensure_video_jobs,
    now_s,
)
from video_service.service import VideoService

log = structlog.get_logger(__name__)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying later: a store, the bus or the model queue away or busy."""
    if isinstance(exc, KashfError):
        return isinstance(exc, Unavailable | Timeout | Overloaded)
    return isinstance(exc, OSError | TimeoutError | nats.errors.Error)


def job_error(exc: BaseException) -> JobError:
    """The error as a client may see it: never a stack trace or an internal message."""
    if isinstance(exc, KashfError):
        return JobError(error=exc.error_code, detail=exc.detail, status=exc.status)
    return JobError(error="internal", detail="internal error while analysing the video", status=500)


class BlobDeleter(Protocol):
    """Removes a finished job's uploads (best effort; the bucket's TTL is the fallback)."""

    async def delete(self, keys: list[str]) -> None: ...


class VideoJobRunner:
    """Pulls jobs one at a time per free slot (``workers`` per replica) and runs them."""

    def __init__(
        self,
        js: JetStreamContext,
        service: VideoService,
        blobs: BlobDeleter,
        *,
        workers: int = 1,
        ack_wait_s: float = 60.0,
        max_deliver: int = 3,
        retry_delay_s: float = 5.0,
        durable: str = VIDEO_JOBS_DURABLE,
    ) -> None:
        self.js = js
        self.service = service
        self.blobs = blobs
        self.ack_wait_s = ack_wait_s
        self.max_deliver = max_deliver
        self.retry_delay_s = retry_delay_s
        self.durable = durable
        self._slots = asyncio.Semaphore(workers)
        self._kv: KeyValue | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._pull_task: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self.finished = 0  # jobs that reached done or failed, for tests and metrics

    @property
    def running(self) -> bool:
        return self._pull_task is not None and not self._stopping.is_set()

    async def start(self) -> None:
        self._kv = await ensure_video_jobs(self.js)
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            max_ack_pending=1000,
            filter_subject=VIDEO_JOBS_SUBJECT,
        )
        self._sub = await bind_pull_consumer(self.js, VIDEO_JOBS_STREAM, config)
        self._pull_task = asyncio.create_task(self._pull(), name="video-jobs-pull")

    async def stop(self, timeout_s: float = 20.0) -> None:
        """Stop pulling; running jobs get ``timeout_s`` to finish, then are cancelled and handed back."""
        self._stopping.set()
        if self._pull_task is not None:
            self._pull_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pull_task
        await finish_or_cancel(self._jobs, timeout_s)
        await unbind(self._sub)
        self._sub = None

    async def _pull(self) -> None:
        assert self._sub is not None
        while not self._stopping.is_set():
            await self._slots.acquire()
            try:
                msgs = await self._sub.fetch(batch=1, timeout=1.0)
            except nats.errors.TimeoutError:
                self._slots.release()
                continue
            except (nats.errors.Error, OSError) as exc:
                self._slots.release()
                log.warning("job_fetch_failed", error=type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self._run(msgs[0]), name="video-job")
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)

    async def _run(self, msg: Msg) -> None:
        try:
            await self._handle(msg)
        except asyncio.CancelledError:
            # Shutdown: hand the job back so another replica (or this one, restarted) takes it.
            with contextlib.suppress(nats.errors.Error, OSError):
                await msg.nak()
            raise
        except Exception:
            log.exception("video_job_crashed")
            with contextlib.suppress(nats.errors.Error, OSError):
                await msg.nak(delay=self.retry_delay_s)
        finally:
            self._slots.release()

    async def _handle(self, msg: Msg) -> None:
        try:
            job = VideoJobRequest.model_validate_json(msg.data)
        except ValidationError as exc:
            log.error("poison_job_terminated", error=str(exc)[:300])
            await msg.term()
            return
        record = await self.read(job.job_id)
        if record is None or record.state in ("done", "failed"):
            # Expired, or already answered before a lost ack: nothing left to do.
            log.info("video_job_skipped", job_id=job.job_id, state=record.state if record else None)
            await msg.ack()
            return
        delivery = _deliveries(msg)
        await self._write(record.model_copy(update={
            "state": "running", "attempts": delivery, "updated_at": now_s(), "error": None,
        }))
        log.info("video_job_started", job_id=job.job_id, videos=len(job.videos), delivery=delivery)
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        try:
            outcomes = [await self._one(job, item) for item in job.videos]
        except Exception as exc:
            await self._failed(msg, job, record, delivery, exc)
            return
        finally:
            heartbeat.cancel()
        ok = [o for o in outcomes if o.error is None]
        failed = not ok and bool(outcomes)
        await self._write(record.model_copy(update={
            "state": "failed" if failed else "done", "attempts": delivery, "updated_at": now_s(),
            "result": outcomes, "error": outcomes[0].error if failed else None,
        }))
        await msg.ack()
        self.finished += 1
        log.info("video_job_finished", job_id=job.job_id, state="failed" if failed else "done",
                 frames=sum(len(o.frames) for o in outcomes))
        await self._delete_uploads(job)

    async def _one(self, job: VideoJobRequest, item: VideoJobItem) -> VideoJobOutcome:
        """One video; its own media problem is its outcome, transient failures fail the attempt."""
        request = TagVideoRequest(
            head=job.head, tags=job.tags,
            video=item.video,
            every_ms=job.every_ms, duration_s=job.duration_s, min_frame_diff=job.min_frame_diff,
        )
        try:
            reply = await self.service.run(request, sync=False)
        except KashfError as exc:
            if is_transient(exc):
                raise
            return VideoJobOutcome(key=item.key, value=item.value, error=job_error(exc))
        return VideoJobOutcome(key=item.key, value=item.value, frames=reply.frames)

    async def _failed(
        self, msg: Msg, job: VideoJobRequest, record: VideoJobRecord, delivery: int, exc: Exception
    ) -> None:
        error = job_error(exc)
        if is_transient(exc) and delivery < self.max_deliver:
            delay = self.retry_delay_s * 2 ** (delivery - 1)
            log.warning("video_job_retry", job_id=job.job_id, error=error.detail, delivery=delivery,
                        retry_in_s=delay)
            with contextlib.suppress(KashfError):
                await self._write(record.model_copy(update={
                    "state": "queued", "attempts": delivery, "updated_at": now_s(), "error": error,
                }))
            await msg.nak(delay=delay)
            return
        log.error("video_job_failed", job_id=job.job_id, error=error.detail, delivery=delivery,
                  exc_info=not isinstance(exc, KashfError))
        try:
            await self._write(record.model_copy(update={
                "state": "failed", "attempts": delivery, "updated_at": now_s(), "error": error,
            }))
        except KashfError:
            # The outcome could not be recorded: let the server redeliver the job later.
            await msg.nak(delay=self.retry_delay_s)
            return
        await msg.ack()
        self.finished += 1
        await self._delete_uploads(job)

    async def _delete_uploads(self, job: VideoJobRequest) -> None:
        keys = [i.video.blob_key for i in job.videos if i.video.blob_key]
        if keys:
            await self.blobs.delete(keys)

    async def _heartbeat(self, msg: Msg) -> None:
        interval = max(0.5, self.ack_wait_s / 3)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(nats.errors.Error, OSError):
                await msg.in_progress()

    async def read(self, job_id: str) -> VideoJobRecord | None:
        kv = await self._bucket()
        try:
            entry = await kv.get(job_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise Unavailable("video job store unavailable") from exc
        return VideoJobRecord.model_validate_json(entry.value or b"{}")

    async def _write(self, record: VideoJobRecord) -> None:
        kv = await self._bucket()
        try:
            await kv.put(record.job_id, record.model_dump_json().encode())
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise Unavailable("video job store unavailable") from exc

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(VIDEO_JOBS_BUCKET)
        return self._kv


def _deliveries(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1
