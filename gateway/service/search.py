"""search: a dataset's items nearest a text or an image by cosine over their stored embeddings."""

from __future__ import annotations

import asyncio

import numpy as np

from gateway.infra.searchindex import Matrix, SearchIndex
from gateway.schemas import SearchBody, SearchHitOut
from gateway.service.checks import check_text
from gateway.service.datasets import load_dataset, wrong_kind
from gateway.service.suggest import image_link
from gateway.state import AppState
from gateway.uow import UnitOfWork
from shared.errors import from_wire
from shared.schemas.inference import EmbedReply, EmbedTextsRequest
from shared.schemas.media import EmbedImagesReply, EmbedImagesRequest, MediaInput
from shared.subjects import TEXT_EMBED, VISION_EMBED


async def _embed_query(state: AppState, body: SearchBody) -> tuple[str, np.ndarray]:
    """The query's model id and vector, from the model service of its kind."""
    if body.text is not None:
        reply = await state.bus.request(TEXT_EMBED, EmbedTextsRequest(texts=[body.text]), EmbedReply,
                                        timeout_s=state.settings.text_timeout_s, idempotent=True)
        return reply.model_id, reply.array()[0]
    assert body.image_url is not None
    # vision_service fetches the URL under the same rules as tag_image_urls.
    image = await state.bus.request(VISION_EMBED, EmbedImagesRequest(images=[MediaInput(url=body.image_url)]),
                                    EmbedImagesReply, timeout_s=state.settings.vision_timeout_s, idempotent=True)
    item = image.items[0] if image.items else None
    if item is None or item.vector is None:
        status, code, error = (item.error_status, item.error_code, item.error) if item else (None, None, None)
        raise from_wire(status or 502, code or "fetch_failed", f"image_url: {error or 'no embedding'}")
    return image.model_id, np.frombuffer(item.vector, dtype=np.float32).reshape(image.dim)


async def search(state: AppState, index: SearchIndex, account_id: int, body: SearchBody) -> list[SearchHitOut]:
    kind = "text" if body.text is not None else "image"
    if body.text is not None:
        check_text(body.text, "text", state.settings)
    dataset = await state.transact(lambda uow: load_dataset(uow.repo, account_id, body.dataset))
    if dataset.kind is None:
        return []  # nothing stored yet
    if dataset.kind != kind:
        raise wrong_kind(dataset.name, dataset.kind, kind)
    model_id, query = await _embed_query(state, body)

    async def load() -> Matrix:
        rows = await state.transact(lambda uow: uow.repo.embeddings_of_dataset(dataset.id, model_id))
        return await asyncio.to_thread(Matrix.from_rows, *rows)

    matrix = await index.get(dataset.id, model_id, load)
    # Off the event loop: 100k items take tens of milliseconds (bench/search.py). A few more than asked: an
    # item deleted since the matrix was loaded is skipped.
    hits = await asyncio.to_thread(matrix.nearest, query, body.limit + 10)

    async def describe(uow: UnitOfWork) -> list[SearchHitOut]:
        ids = [item_id for item_id, _ in hits]
        items = await uow.repo.items_by_id(dataset.id, ids)
        labels = await uow.repo.labels([i for i in ids if i in items])
        out = []
        for item_id, score in hits:
            if item_id not in items:
                continue
            item_kind, content = items[item_id]
            out.append(SearchHitOut(item_id=item_id, score=round(score, 4),
                                    content=content if item_kind == "text" else None,
                                    image=image_link(item_id) if item_kind == "image" else None,
                                    reports=labels[item_id]))
        return out[:body.limit]

    return await state.transact(describe)
