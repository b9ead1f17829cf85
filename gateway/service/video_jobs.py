"""Asynchronous video tagging: ``submit_video_job`` (tag_video_frames with ``"async": true``) and
``POST /api/video_job/``, which answers the job's state and, once done, the synchronous answer's shape.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gateway.schemas import ErrorOut, MediaItem, VideoJobOut, VideoJobQueued, VideoParams
from gateway.service.checks import check_media_count
from gateway.service.tagging import prepare
from gateway.service.videos import video_out
from gateway.state import AppState
from shared.bus import Bus
from shared.bus.video_jobs import VideoJobStore
from shared.errors import NotFound
from shared.schemas.inference import HeadRef, TagRef
from shared.schemas.video_jobs import VideoJobItem, VideoJobRecord, VideoJobRequest, VideoKey, new_job_id, now_s

# What new_job_id makes; anything else cannot name a job (and must never reach the KV as a wildcard).
_JOB_ID = re.compile(r"vj[0-9a-f]{32}")


async def submit_videos(
    state: AppState,
    account_id: int,
    params: VideoParams,
    videos: Sequence[MediaItem],
) -> VideoJobQueued:
    """tag_video_frames with ``"async": true``: one job for all the videos, answered at once."""
    check_media_count(videos, "video", state.settings)
    head, tags = await prepare(state, account_id, params.dataset, "image")
    return await submit_video_job(
        state.bus, account_id=account_id, head=head, tags=tags, videos=videos, every_ms=params.every_ms,
        duration_s=params.duration or None, min_frame_diff=params.min_frame_diff,
        top_k=params.top_k, min_probability=params.min_probability,
    )


async def submit_video_job(
    bus: Bus,
    *,
    account_id: int,
    head: HeadRef,
    tags: list[TagRef],
    videos: Sequence[MediaItem],
    every_ms: int,
    duration_s: float | None,
    min_frame_diff: float,
    top_k: int | None = None,
    min_probability: float | None = None,
) -> VideoJobQueued:
    """Record the job as queued, then queue it.

    Uploaded blobs must stay in the blob store: video_service deletes them when the job ends.
    """
    job_id = new_job_id()
    now = now_s()
    record = VideoJobRecord(
        job_id=job_id, account_id=account_id, state="queued", created_at=now, updated_at=now,
        videos=len(videos),
    )
    items = [VideoJobItem(key=_key(video), value=video.name, video=video.ref) for video in videos]
    job = VideoJobRequest(
        job_id=job_id, account_id=account_id, head=head, tags=tags, videos=items, every_ms=every_ms,
        duration_s=duration_s or None, min_frame_diff=min_frame_diff, top_k=top_k, min_probability=min_probability,
    )
    await VideoJobStore(bus.js).submit(record, job)
    return VideoJobQueued(job_id=job_id, state="queued")


def _key(video: MediaItem) -> VideoKey:
    return "video_file" if video.uploaded else "video_url"


async def read_video_job(bus: Bus, account_id: int, job_id: str) -> VideoJobOut:
    """The job as the API shows it; a job of another account (or expired, or unknown) is 404."""
    if not _JOB_ID.fullmatch(job_id):
        raise NotFound("video job not found (jobs are kept for 24 hours)")
    record = await VideoJobStore(bus.js).read(job_id)
    if record is None or record.account_id != account_id:
        raise NotFound("video job not found (jobs are kept for 24 hours)")
    result = None
    if record.state in ("done", "failed") and record.result is not None:
        result = [
            video_out(o.value, o.key == "video_file", o.error.detail if o.error else None, o.frames)
            for o in record.result
        ]
    error = None
    if record.state == "failed" and record.error is not None:
        error = ErrorOut(error=record.error.error, detail=record.error.detail)
    return VideoJobOut(job_id=record.job_id, state=record.state, result=result, error=error)
