"""Synchronous video tagging: one VIDEO_TAG request per video, answered with the frames whose tags changed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.schemas import FrameOut, MediaItem, VideoParams, VideoTagsOut
from gateway.service.checks import check_media_count
from gateway.service.tagging import count_predictions, prepare, tags_out
from gateway.state import AppState
from shared.errors import Timeout
from shared.schemas import media
from shared.schemas.media import TagVideoReply, TagVideoRequest, VideoFrame
from shared.subjects import VIDEO_TAG


def frames_out(frames: Sequence[VideoFrame]) -> list[FrameOut]:
    return [FrameOut(frame=f.frame, time=f.time, tags=tags_out(f.tags)) for f in frames]


def video_out(name: str, uploaded: bool, error: str | None, frames: Sequence[VideoFrame]) -> VideoTagsOut:
    """One video's answer, named by ``video_file`` (an upload) or ``video_url``, as the request named it."""
    return VideoTagsOut(
        video_url=None if uploaded else name,
        video_file=name if uploaded else None,
        error=error,
        frames=frames_out(frames),
    )


def check_video_params(params: VideoParams) -> None:
    media.check_video_params(params.every_ms, params.duration, params.min_frame_diff)


async def tag_videos(
    state: AppState, account_id: int, params: VideoParams, videos: Sequence[MediaItem]
) -> list[VideoTagsOut]:
    """Concurrent requests, so the service's replicas share the videos."""
    check_media_count(videos, "video", state.settings)
    head, tags = await prepare(state, account_id, params.dataset, "image")
    requests = [
        TagVideoRequest(
            head=head,
            tags=tags,
            video=video.ref,
            every_ms=params.every_ms,
            duration_s=params.duration or None,
            min_frame_diff=params.min_frame_diff,
            top_k=params.top_k,
            min_probability=params.min_probability,
        )
        for video in videos
    ]
    timeout_s = state.settings.video_timeout_s
    try:
        replies = await asyncio.gather(
            *(state.bus.request(VIDEO_TAG, request, TagVideoReply, timeout_s=timeout_s, idempotent=True)
              for request in requests)
        )
    except Timeout as exc:
        raise Timeout(f"{exc.detail}; for long videos send \"async\": true and poll POST /api/video_job/") from exc
    count_predictions(state.predictions, (frame.tags for reply in replies for frame in reply.frames))
    return [
        video_out(video.name, video.uploaded, reply.error or None, reply.frames)
        for video, reply in zip(videos, replies, strict=True)
    ]
