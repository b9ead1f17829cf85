"""The asynchronous video jobs' store, for the gateway and video_service: the work queue (a JetStream
stream) and the job records (a KV bucket). Who may read a record is the gateway's business."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.kv import KeyValue

from shared import subjects
from shared.bus.streams import declare_key_value, declare_stream
from shared.errors import Overloaded, TooLarge, Unavailable
from shared.schemas.video_jobs import VideoJobRecord, VideoJobRequest

_UNAVAILABLE = (nats.errors.Error, TimeoutError, OSError)


@dataclass(frozen=True)
class VideoJobNames:
    """Where jobs live (tests give each their own)."""

    stream: str = subjects.VIDEO_JOBS_STREAM
    subject: str = subjects.VIDEO_JOBS_SUBJECT
    bucket: str = subjects.VIDEO_JOBS_BUCKET
    max_msgs: int = subjects.VIDEO_JOBS_MAX_MSGS

    def stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.stream, subjects=[self.subject], retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE, max_age=subjects.VIDEO_JOBS_TTL_S, max_msgs=self.max_msgs,
            discard=DiscardPolicy.NEW, duplicate_window=600.0,
        )

    def bucket_config(self) -> KeyValueConfig:
        return KeyValueConfig(bucket=self.bucket, history=1, ttl=subjects.VIDEO_JOBS_TTL_S, storage=StorageType.FILE)


class VideoJobStore:
    """Job records by id and the queue of job messages; store failures raise ``Unavailable``."""

    def __init__(self, js: JetStreamContext, names: VideoJobNames | None = None, *,
                 replicas: int | None = None) -> None:
        self.js = js
        self.names = names or VideoJobNames()
        self.replicas = replicas  # None: existing ones keep their copies (shared.bus.streams)
        self._kv: KeyValue | None = None

    async def ensure(self) -> None:
        """Declare the stream and the bucket; idempotent (the gateway and every video_service call it)."""
        try:
            await declare_stream(self.js, self.names.stream_config(), self.replicas)
            self._kv = await declare_key_value(self.js, self.names.bucket_config(), self.replicas)
        except _UNAVAILABLE as exc:
            raise Unavailable("video job store unavailable") from exc

    async def submit(self, record: VideoJobRecord, job: VideoJobRequest) -> None:
        """Write the ``queued`` record, then queue the job; a job that could not be queued leaves no record."""
        await self.write(record)
        try:
            await self._publish(job)
        except BaseException:
            # Best effort: the bucket's TTL removes an orphan record.
            with contextlib.suppress(*_UNAVAILABLE):
                await (await self._bucket()).delete(record.job_id)
            raise

    async def read(self, job_id: str) -> VideoJobRecord | None:
        """The record, or None (unknown, expired, or no job ever submitted)."""
        kv = await self._find_bucket()
        if kv is None:
            return None
        try:
            entry = await kv.get(job_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        except _UNAVAILABLE as exc:
            raise Unavailable("video job store unavailable") from exc
        return VideoJobRecord.model_validate_json(entry.value or b"{}")

    async def write(self, record: VideoJobRecord) -> None:
        kv = await self._bucket()
        try:
            await kv.put(record.job_id, record.model_dump_json().encode())
        except _UNAVAILABLE as exc:
            raise Unavailable("video job store unavailable") from exc

    async def _find_bucket(self) -> KeyValue | None:
        """The bucket, or None before any job was submitted."""
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(self.names.bucket)
            except nats.js.errors.BucketNotFoundError:
                return None
            except _UNAVAILABLE as exc:
                raise Unavailable("video job store unavailable") from exc
        return self._kv

    async def _bucket(self) -> KeyValue:
        kv = await self._find_bucket()
        if kv is None:
            await self.ensure()
            assert self._kv is not None
            kv = self._kv
        return kv

    async def _publish(self, job: VideoJobRequest) -> None:
        data = job.model_dump_json().encode()
        headers = {"Nats-Msg-Id": job.job_id}
        for attempt in (1, 2):
            try:
                await self.js.publish(self.names.subject, data, headers=headers, timeout=5.0)
                return
            except nats.errors.NoRespondersError as exc:
                # No stream yet (no video_service has started): declare it and queue the job for it.
                if attempt == 2:
                    raise Unavailable("video job queue unavailable") from exc
                await self.ensure()
            except nats.errors.MaxPayloadError as exc:
                raise TooLarge("too many or too long video URLs for one job (message bus max payload)") from exc
            except nats.js.errors.APIError as exc:
                if "maximum messages" in (exc.description or ""):
                    raise Overloaded("too many video jobs queued; retry later") from exc
                raise Unavailable("video job queue unavailable") from exc
            except _UNAVAILABLE as exc:
                raise Unavailable("video job queue unavailable") from exc
