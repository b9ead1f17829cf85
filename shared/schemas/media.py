"""Requests to vision_service and video_service, and their replies."""

from __future__ import annotations

from pydantic import Base64Bytes

from shared.errors import BadRequest
from shared.schemas.base import Message
from shared.schemas.inference import HeadRef, ScoredTag, TagRef, TagSelection


class MediaInput(Message):
    """Where one image or video comes from: a URL the service fetches safely, an uploaded blob
    (key in the BLOBS_BUCKET object store; NATS payloads stay under 1 MiB), or small inline bytes."""

    url: str | None = None
    blob_key: str | None = None
    data: Base64Bytes | None = None
    name: str | None = None  # uploaded file name, echoed back as image_file / video_file


class TagImagesRequest(TagSelection):
    head: HeadRef
    tags: list[TagRef]
    images: list[MediaInput]


class EmbedImagesRequest(Message):
    """Embed images; with keep_copy the reply carries a bounded JPEG copy to store for re-embedding."""

    images: list[MediaInput]
    keep_copy: bool = False


class ImageEmbedding(Message):
    vector: Base64Bytes | None = None
    sha256: str | None = None  # of the original bytes: the dedup key of image items
    copy_bytes: Base64Bytes | None = None
    copy_media_type: str | None = None
    error: str | None = None
    error_code: str | None = None
    error_status: int | None = None


class EmbedImagesReply(Message):
    model_id: str
    dim: int
    items: list[ImageEmbedding]


def check_video_params(every_ms: int, duration_s: float | None, min_frame_diff: float) -> None:
    """The sampling rules, for the gateway (before any upload) and video_service (before any download)."""
    if every_ms <= 0:
        raise BadRequest("every_ms must be a positive number of milliseconds", code="bad_every_ms")
    if duration_s is not None and duration_s < 0:
        raise BadRequest("duration must be 0 (whole video) or a positive number of seconds", code="bad_duration")
    if not 0 <= min_frame_diff <= 255:
        raise BadRequest("min_frame_diff must be between 0 and 255", code="bad_min_frame_diff")


class VideoSampling(Message):
    """Which frames are analysed: one per ``every_ms`` of the first ``duration_s`` (None or 0: all) seconds,
    skipping those within ``min_frame_diff`` (mean absolute difference, 0-255) of the last analysed one."""

    every_ms: int
    duration_s: float | None = None
    min_frame_diff: float = 0.0

    def check(self) -> None:
        check_video_params(self.every_ms, self.duration_s, self.min_frame_diff)


class TagVideoRequest(VideoSampling, TagSelection):
    head: HeadRef
    tags: list[TagRef]
    video: MediaInput


class VideoFrame(Message):
    frame: int
    time: str
    tags: list[ScoredTag]


class TagVideoReply(Message):
    model_id: str
    frames: list[VideoFrame]
    analysed_frames: int = 0
    error: str | None = None
    error_code: str | None = None
