"""suggest_labels: the dataset's open suggestions, as the trainer ranked them after its last live fit."""

from __future__ import annotations

from gateway.schemas import SuggestionOut, SuggestLabelsBody
from gateway.service.datasets import load_dataset
from gateway.service.tagging import probability
from gateway.service.tags import load_tag, tag_not_found
from gateway.uow import UnitOfWork


def image_link(item_id: int) -> str:
    return f"/api/items/{item_id}/image"


async def suggest_labels(uow: UnitOfWork, account_id: int, body: SuggestLabelsBody) -> list[SuggestionOut]:
    """Best first; a pair reported since the suggestions were computed is no longer open (left out)."""
    dataset = await load_dataset(uow.repo, account_id, body.dataset)
    if body.tag_id is not None:
        _, owner = await load_tag(uow.repo, account_id, body.tag_id, "reference")
        if owner.id != dataset.id:
            raise tag_not_found(body.tag_id)
    rows = await uow.repo.suggestions(dataset.id, body.tag_id, body.limit)
    return [
        SuggestionOut(item_id=row.item_id, content=row.content if row.kind == "text" else None,
                      image=image_link(row.item_id) if row.kind == "image" else None, reason=row.reason,
                      tag_id=row.tag_id, probability=probability(row.probability))
        for row in rows
    ]
