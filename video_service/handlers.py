"""NATS transport of the video service: VIDEO_TAG in the ``video_service`` queue group."""

from __future__ import annotations

import asyncio

from modelkit.metrics import instrumented
from shared.bus import Bus
from shared.errors import Timeout
from shared.schemas.media import TagVideoReply, TagVideoRequest
from shared.subjects import VIDEO_TAG
from video_service.service import VideoService


async def serve(bus: Bus, service: VideoService, *, concurrency: int) -> None:
    """Subscribe VIDEO_TAG; call only once the model is warmed.

    Work stops at the subject's timeout: past it the requester has already answered its client 504.
    """

    async def tag(request: TagVideoRequest) -> TagVideoReply:
        try:
            async with asyncio.timeout(VIDEO_TAG.timeout_s):
                return await service.tag_video(request)
        except TimeoutError:
            raise Timeout(f"video not analysed within {VIDEO_TAG.timeout_s:g} s") from None

    await bus.serve(VIDEO_TAG, TagVideoRequest, instrumented(VIDEO_TAG.name, tag), concurrency=concurrency)
