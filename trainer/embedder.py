"""The trainer's client of the model services: which model each kind runs, and embeddings of stored items."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import structlog

from shared import subjects
from shared.bus import Bus
from shared.bus.blobs import BlobStore
from shared.errors import Unavailable
from shared.schemas.inference import EmbedReply, EmbedTextsRequest, ModelInfoReply, ModelInfoRequest
from shared.schemas.media import EmbedImagesReply, EmbedImagesRequest, MediaInput
from trainer.repository import ItemToEmbed

log = structlog.get_logger(__name__)

MODEL_INFO = {"text": subjects.TEXT_MODEL_INFO, "image": subjects.IMAGE_MODEL_INFO}


class ModelChanged(Unavailable):
    """The served model is not the one this refit started with; a retry starts over with the new one."""

    code = "model_changed"


class BusEmbedder:
    """Embeds items by asking the model services over NATS. Asking twice does no harm, so a request a dead
    replica held is sent again (to a live one) instead of failing the refit."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.blobs = BlobStore(bus.js)

    async def model(self, kind: str) -> ModelInfoReply:
        """The model a service of ``kind`` runs now, from its model-info subject (no model call)."""
        return await self.bus.request(MODEL_INFO[kind], ModelInfoRequest(), ModelInfoReply, idempotent=True)

    async def embed(self, kind: str, items: Sequence[ItemToEmbed]) -> tuple[str, list[np.ndarray | None]]:
        """The model id of the reply and one vector per item, None for an item that could not be embedded."""
        if kind == "text":
            texts = [item.content or "" for item in items]
            reply = await self.bus.request(subjects.TEXT_EMBED, EmbedTextsRequest(texts=texts), EmbedReply,
                                           idempotent=True)
            return reply.model_id, list(reply.array())
        # Kept image bytes travel by object-store key: a message carries at most 1 MiB.
        keys: list[str] = []
        inputs: list[MediaInput] = []
        try:
            for item in items:
                if item.media is not None:
                    keys.append(await self.blobs.put(item.media, prefix="trainer"))
                    inputs.append(MediaInput(blob_key=keys[-1]))
                else:
                    inputs.append(MediaInput(url=item.source_url))
            image_reply = await self.bus.request(subjects.VISION_EMBED, EmbedImagesRequest(images=inputs),
                                                 EmbedImagesReply, idempotent=True)
        finally:
            await self.blobs.delete(keys)
        vectors: list[np.ndarray | None] = []
        for item, result in zip(items, image_reply.items, strict=True):
            if result.vector is None:
                # One unreadable image must not block the dataset: it is left out of this fit.
                log.warning("item_not_embedded", item_id=item.id, error_code=result.error_code, error=result.error)
                vectors.append(None)
            else:
                vectors.append(np.frombuffer(result.vector, dtype=np.float32).reshape(image_reply.dim))
        return image_reply.model_id, vectors
