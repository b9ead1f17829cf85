"""Requests to vision_service and video_service, and their replies."""

from __future__ import annotations

from pydantic import Base64Bytes

from shared.schemas.base import Message
from shared.schemas.inference import HeadRef, ScoredTag, TagRef


class MediaInput(Message):
    """Where one image or video comes from: a URL the service fetches safely, an uploaded blob
    (key in the BLOBS_BUCKET object store; NATS payloads stay under 1 MiB), or small inline bytes."""

    url: str | None = None
    blob_key: str | None = None
    data: Base64Bytes | None = None
    name: str | None = None  # uploaded file name, echoed back as image_file / video_file


class TagImagesRequest(Message):
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


class TagVideoRequest(Message):
    head: HeadRef
    tags: list[TagRef]
    video: MediaInput
    every_ms: int
    duration_s: float | None = None
    min_frame_diff: float = 0.0


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
