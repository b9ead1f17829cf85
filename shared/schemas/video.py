"""Aliases kept for importers: the video wire schemas live in ``shared.schemas.media``."""

from __future__ import annotations

from shared.schemas.media import TagVideoReply, TagVideoRequest, VideoFrame

FrameResult = VideoFrame

__all__ = ["FrameResult", "TagVideoReply", "TagVideoRequest", "VideoFrame"]
