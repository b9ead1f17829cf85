"""NATS transport of the video service: VIDEO_TAG (queue group video_service), uploads from the blob store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from modelkit.metrics import instrumented
from shared.bus import Bus
from shared.errors import NotFound, Timeout, TooLarge, Unavailable
from shared.schemas.media import TagVideoReply, TagVideoRequest
from shared.subjects import BLOBS_BUCKET, VIDEO_TAG
from video_service.service import VideoService


class ObjectStoreBlobs:
    """Uploads in the BLOBS_BUCKET object store, put there by the gateway under ``blob_key``."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._store: ObjectStore | None = None

    async def _bucket(self) -> ObjectStore:
        if self._store is None:
            self._store = await self._js.object_store(BLOBS_BUCKET)
        return self._store

    async def stream_to_file(self, key: str, dest: Path, max_bytes: int) -> int:
        """Write the upload into ``dest`` chunk by chunk (never whole in memory); returns its size."""
        try:
            store = await self._bucket()
            info = await store.get_info(key)
            size = info.size or 0
            if size > max_bytes:
                raise TooLarge(f"upload over {max_bytes} bytes (KASHF_MAX_VIDEO_BYTES)")
            handle = await asyncio.to_thread(dest.open, "wb")
            try:
                await store.get(key, writeinto=handle)
            finally:
                await asyncio.to_thread(handle.close)
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError):
            raise NotFound("uploaded video not found (uploads expire after an hour)") from None
        except nats.js.errors.BucketNotFoundError:
            raise Unavailable("upload store missing") from None
        except nats.js.errors.DigestMismatchError:
            raise Unavailable("upload store returned a corrupted video") from None
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise Unavailable("upload store unavailable") from exc
        return size

    async def delete(self, keys: list[str]) -> None:
        """Best effort (the bucket's TTL is the fallback)."""
        try:
            store = await self._bucket()
            for key in keys:
                await store.delete(key)
        except (nats.js.errors.Error, nats.errors.Error, TimeoutError, OSError):
            pass


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
