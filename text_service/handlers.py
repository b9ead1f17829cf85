"""NATS transport of the text service: embed, tag and model info in the ``text_service`` queue group."""

from __future__ import annotations

import base64

from modelkit.info import serve_model_info
from modelkit.metrics import instrumented
from shared.bus import Bus
from shared.errors import TooLarge
from shared.schemas.inference import EmbedReply, EmbedTextsRequest, TagReply, TagTextsRequest, pack_vectors
from shared.subjects import TEXT_EMBED, TEXT_MODEL_INFO, TEXT_TAG
from text_service.service import TextService

_REPLY_OVERHEAD = 256  # JSON keys, model id and dim around the base64 vectors


def max_texts_per_embed(max_payload: int, dim: int) -> int:
    """Most texts whose vectors fit one reply: base64 makes 4 bytes of every 3."""
    return max(1, ((max_payload - _REPLY_OVERHEAD) * 3 // 4) // (dim * 4))


async def serve(bus: Bus, service: TextService, *, concurrency: int) -> None:
    """Subscribe embed, tag and model info; call only once the model is warmed."""
    limit = max_texts_per_embed(bus.nc.max_payload, service.dim)

    async def embed(request: EmbedTextsRequest) -> EmbedReply:
        if len(request.texts) > limit:
            raise TooLarge(f"at most {limit} texts per embed request (the message bus max payload)")
        model_id, vectors = await service.embed(request.texts)
        # Base64Bytes decodes what it is given, so the bytes go in already encoded.
        packed = base64.b64encode(pack_vectors(vectors))
        return EmbedReply(model_id=model_id, dim=service.dim, vectors=packed)

    async def tag(request: TagTextsRequest) -> TagReply:
        return await service.tag(request)

    await bus.serve(
        TEXT_EMBED, EmbedTextsRequest, instrumented(TEXT_EMBED.name, embed), concurrency=concurrency
    )
    await bus.serve(TEXT_TAG, TagTextsRequest, instrumented(TEXT_TAG.name, tag), concurrency=concurrency)
    await serve_model_info(bus, TEXT_MODEL_INFO, service)
