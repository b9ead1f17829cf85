"""Asynchronous video tagging: the job message (JetStream work queue) and the job record (KV bucket).

The gateway writes a ``queued`` record under the job id, then publishes ``VideoJobRequest`` with
``Nats-Msg-Id`` = job id; video_service pulls it, updates the record (``running``, then ``done``/``failed``
with the result) and acks. Names and lifetimes: shared.subjects; the store: shared.bus.video_jobs.
"""

from __future__ import annotations

import secrets
import time
from typing import Literal

from pydantic import Field

from shared.schemas.base import Message
from shared.schemas.inference import HeadRef, TagRef, TagSelection
from shared.schemas.media import MediaInput, VideoFrame, VideoSampling

JobState = Literal["queued", "running", "done", "failed"]
VideoKey = Literal["video_url", "video_file"]


def new_job_id() -> str:
    """Unguessable, URL- and KV-key-safe (letters and digits only)."""
    return f"vj{secrets.token_hex(16)}"


def now_s() -> float:
    return time.time()


class VideoJobItem(Message):
    """One video of a job: the answer's key (``video_url``/``video_file``), its value, where it is."""

    key: VideoKey
    value: str
    video: MediaInput


class VideoJobRequest(VideoSampling, TagSelection):
    """The job message: every video sampled alike, tagged with ``tags`` by ``head`` (``top_k`` and
    ``min_probability`` as the tag call asked)."""

    job_id: str
    account_id: int
    head: HeadRef
    tags: list[TagRef]
    videos: list[VideoJobItem]


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

