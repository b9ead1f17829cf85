"""Text service logic: normalise, embed through the dynamic batcher, tag with the dataset's head."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import structlog

from modelkit.heads import tag_vectors
from modelkit.service import DEFAULT_BATCHING, BatchedModelService, Batching, HeadSource
from shared.schemas.inference import ItemResult, TagReply, TagTextsRequest
from shared.textnorm import normalize_text
from text_service.model import Encoder

log = structlog.get_logger(__name__)


class TextService(BatchedModelService[str]):
    """Embeds texts (merged across concurrent requests) and tags them; owns no transport."""

    def __init__(
        self,
        encoder: Encoder,
        heads: HeadSource,
        *,
        batching: Batching = DEFAULT_BATCHING,
    ) -> None:
        super().__init__(encoder, heads, self._encode_batch, name="text", batching=batching)
        self.encoder: Encoder = encoder

    def _encode_batch(self, texts: list[str]) -> Sequence[np.ndarray]:
        # Runs in the model thread: normalising here keeps the event loop free for long texts.
        vectors = self.encoder.encode([normalize_text(t) for t in texts])
        return list(np.asarray(vectors, dtype=np.float32))

    async def embed(self, texts: list[str]) -> tuple[str, np.ndarray]:
        """(model_id, (n, dim) float32 L2-normalised) for the normalised texts, in order."""
        if not texts:
            return self.model_id, np.zeros((0, self.dim), dtype=np.float32)
        rows = await self.batcher.submit(texts)
        return self.model_id, np.stack(rows)

    async def tag(self, request: TagTextsRequest) -> TagReply:
        """Active tags passing their thresholds per text, highest first; the unknown tag when none does.

        A head of another embedding model is a 503 ``head_model_mismatch``, never a silent "unknown"."""
        head = await self.head_for(request.head)
        _, vectors = await self.embed(request.texts)
        tags = tag_vectors(head, vectors, request.tags, top_k=request.top_k, min_probability=request.min_probability)
        return TagReply(model_id=self.model_id, items=[ItemResult(tags=row) for row in tags])
