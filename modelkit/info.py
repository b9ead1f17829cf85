"""Each model service answers, on its kind's model-info subject, which embedding model it runs."""

from __future__ import annotations

from modelkit.service import ModelInfo
from shared.bus import Bus
from shared.schemas.inference import ModelInfoReply, ModelInfoRequest
from shared.subjects import Subject


async def serve_model_info(bus: Bus, subject: Subject, model: ModelInfo, *, concurrency: int = 8) -> None:
    """Answer ``subject`` with ``model``'s id and dimension; subscribe it after the model's own subjects."""
    reply = ModelInfoReply(model_id=model.model_id, dim=model.dim)

    async def answer(_: ModelInfoRequest) -> ModelInfoReply:
        return reply

    await bus.serve(subject, ModelInfoRequest, answer, concurrency=concurrency)
