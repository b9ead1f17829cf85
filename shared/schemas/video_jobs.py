"""Asynchronous video tagging: the job message (JetStream work queue) and the job record (KV bucket).

The gateway writes a ``queued`` record under the job id, then publishes ``VideoJobRequest`` on
``VIDEO_JOBS_SUBJECT`` with ``Nats-Msg-Id`` = job id; video_service pulls it, updates the record
(``running``, then ``done``/``failed`` with the result) and acks. Records expire after a day.
"""

from __future__ import annotations

import secrets
import time
from typing import Literal

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue
from pydantic import Field

from shared.schemas.base import Message
from shared.schemas.inference import HeadRef, TagRef
from shared.schemas.media import MediaInput, VideoFrame

VIDEO_JOBS_STREAM = "KASHF_VIDEO_JOBS"
VIDEO_JOBS_SUBJECT = "kashf.jobs.video"
VIDEO_JOBS_BUCKET = "kashf-video-jobs"
VIDEO_JOBS_DURABLE = "video_service"
VIDEO_JOBS_TTL_S = 24 * 3600.0
# A job message is small (refs, not bytes); the cap bounds what a flood of jobs can hold on disk.
VIDEO_JOBS_MAX_MSGS = 100_000

JobState = Literal["queued", "running", "done", "failed"]
VideoKey = Literal["video_url", "video_file"]


def new_job_id() -> str:
    """Unguessable, URL- and KV-key-safe (letters and digits only)."""
    return f"vj{secrets.token_hex(16)}"


def now_s() -> float:
    return time.time()


def stream_config() -> StreamConfig:
    """The work-queue stream: each job is delivered to one consumer and deleted once acked."""
    return StreamConfig(
        name=VIDEO_JOBS_STREAM,
        subjects=[VIDEO_JOBS_SUBJECT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=VIDEO_JOBS_TTL_S,
        max_msgs=VIDEO_JOBS_MAX_MSGS,
        discard=DiscardPolicy.NEW,
        duplicate_window=600.0,
    )


def kv_config() -> KeyValueConfig:
    return KeyValueConfig(
        bucket=VIDEO_JOBS_BUCKET, history=1, ttl=VIDEO_JOBS_TTL_S, storage=StorageType.FILE
    )


async def ensure_video_jobs(js: JetStreamContext) -> KeyValue:
    """Declare the job stream and bucket (idempotent: the gateway and every video_service replica call it)."""
    config = stream_config()
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.update_stream(config)
    try:
        return await js.create_key_value(kv_config())
    except nats.js.errors.BadRequestError:
        return await js.key_value(VIDEO_JOBS_BUCKET)


class VideoJobItem(Message):
    """One video of a job: the answer's key (``video_url``/``video_file``), its value, where it is."""

    key: VideoKey
    value: str
    video: MediaInput


class VideoJobRequest(Message):
    """The job message; fields mean what ``tag_video_frames`` says (``duration_s`` None: whole video)."""

    job_id: str
    account_id: int
    head: HeadRef
    tags: list[TagRef]
    videos: list[VideoJobItem]
    every_ms: int
    duration_s: float | None = None
    min_frame_diff: float = 0.0


class JobError(Message):
    """Why a job or one of its videos failed, as the API renders errors."""

    error: str
    detail: str
    status: int = 500


class VideoJobOutcome(Message):
    """One video's answer: its frames (as the synchronous reply), or its error."""

    key: VideoKey
    value: str
    frames: list[VideoFrame] = Field(default_factory=list)
    error: JobError | None = None


class VideoJobRecord(Message):
    """The KV value under the job id; ``account_id`` scopes who may read it."""

    job_id: str
    account_id: int
    state: JobState
    created_at: float
    updated_at: float
    attempts: int = 0
    videos: int = 0
    result: list[VideoJobOutcome] | None = None
    error: JobError | None = None
