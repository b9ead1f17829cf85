"""NATS transport of the vision service: VISION_EMBED and VISION_TAG in the ``vision_service`` queue group."""

from __future__ import annotations

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from modelkit.info import serve_model_info
from modelkit.metrics import instrumented
from shared.bus import Bus
from shared.errors import NotFound, TooLarge, Unavailable
from shared.schemas.inference import TagReply
from shared.schemas.media import EmbedImagesReply, EmbedImagesRequest, TagImagesRequest
from shared.subjects import BLOBS_BUCKET, IMAGE_MODEL_INFO, VISION_EMBED, VISION_TAG
from vision_service.service import VisionService

_ITEM_OVERHEAD = 160  # JSON keys and the sha256 around one base64 vector


def max_images_per_embed(max_payload: int, dim: int) -> int:
    """Most vectors (without copies) whose reply fits one message: base64 makes 4 bytes of every 3."""
    return max(1, max_payload // (dim * 4 * 4 // 3 + _ITEM_OVERHEAD))


class ObjectStoreBlobs:
    """Uploads in the BLOBS_BUCKET object store, put there by the gateway under ``blob_key``."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._store: ObjectStore | None = None

    async def get(self, key: str, max_bytes: int) -> bytes:
        try:
            if self._store is None:
                self._store = await self._js.object_store(BLOBS_BUCKET)
            info = await self._store.get_info(key)
            if (info.size or 0) > max_bytes:
                raise TooLarge(f"upload over {max_bytes} bytes (KASHF_MAX_IMAGE_BYTES)")
            result = await self._store.get(key)
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError):
            raise NotFound("uploaded image not found (uploads expire after an hour)") from None
        except nats.js.errors.BucketNotFoundError:
            raise Unavailable("upload store missing") from None
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise Unavailable("upload store unavailable") from exc
        return result.data or b""


async def serve(bus: Bus, service: VisionService, *, concurrency: int) -> None:
    """Subscribe embed, tag and model info; call only once the model is warmed."""
    max_payload = bus.nc.max_payload
    limit = max_images_per_embed(max_payload, service.dim)

    async def embed(request: EmbedImagesRequest) -> EmbedImagesReply:
        if len(request.images) > limit:
            raise TooLarge(f"at most {limit} images per embed request (the message bus max payload)")
        reply = await service.embed(request)
        size = len(reply.model_dump_json())
        if size > max_payload:
            # Copies vary in size, so only the built reply tells: say how many would have fit.
            fit = max(1, len(request.images) * max_payload // size)
            raise TooLarge(f"reply for {len(request.images)} images over the message bus max payload: "
                           f"send at most {fit} images per request with keep_copy")
        return reply

    async def tag(request: TagImagesRequest) -> TagReply:
        return await service.tag(request)

    await bus.serve(
        VISION_EMBED, EmbedImagesRequest, instrumented(VISION_EMBED.name, embed), concurrency=concurrency
    )
    await bus.serve(VISION_TAG, TagImagesRequest, instrumented(VISION_TAG.name, tag), concurrency=concurrency)
    await serve_model_info(bus, IMAGE_MODEL_INFO, service)
