"""NATS transport of the vision service: embed, tag and model info in the ``vision_service`` queue group."""

from __future__ import annotations

from modelkit.info import serve_model_info
from modelkit.metrics import instrumented
from shared.bus import Bus
from shared.errors import TooLarge
from shared.schemas.inference import TagReply
from shared.schemas.media import EmbedImagesReply, EmbedImagesRequest, TagImagesRequest
from shared.subjects import IMAGE_MODEL_INFO, VISION_EMBED, VISION_TAG
from vision_service.service import VisionService

_ITEM_OVERHEAD = 160  # JSON keys and the sha256 around one base64 vector


def max_images_per_embed(max_payload: int, dim: int) -> int:
    """Most vectors (without copies) whose reply fits one message: base64 makes 4 bytes of every 3."""
    return max(1, max_payload // (dim * 4 * 4 // 3 + _ITEM_OVERHEAD))


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
