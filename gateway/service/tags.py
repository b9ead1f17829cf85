"""Tags: create (creating the dataset when missing), update, delete."""

from __future__ import annotations

from typing import Any

from gateway.repository import Repository
from gateway.schemas import CreateTagBody, UpdateTagBody
from shared.db.models import Dataset, Tag
from shared.errors import NotFound


def tag_not_found(tag_id: int) -> NotFound:
    return NotFound(f"tag {tag_id} not found", code="tag_not_found")


async def load_tag(repo: Repository, account_id: int, tag_id: int) -> tuple[Tag, Dataset]:
    found = (await repo.tags_of_account(account_id, [tag_id])).get(tag_id)
    if found is None:
        raise tag_not_found(tag_id)
    return found


def _tag_out(tag: Tag) -> dict[str, Any]:
    return {"title": tag.title, "tag_id": tag.id, "active": tag.active}


async def create_tag(repo: Repository, account_id: int, body: CreateTagBody) -> dict[str, Any]:
    dataset = await repo.get_or_create_dataset(account_id, body.dataset)
    return _tag_out(await repo.insert_tag(dataset.id, body.title))


async def update_tag(repo: Repository, account_id: int, body: UpdateTagBody) -> dict[str, Any]:
    tag, dataset = await load_tag(repo, account_id, body.tag_id)
    if body.dataset is not None and body.dataset != dataset.name:
        raise NotFound(f"tag {body.tag_id} not found in dataset '{body.dataset}'", code="tag_not_found")
    return _tag_out(await repo.update_tag(tag.id, body.title, body.active))


async def delete_tag(repo: Repository, account_id: int, tag_id: int) -> dict[str, Any]:
    tag, dataset = await load_tag(repo, account_id, tag_id)
    deleted = await repo.delete_tag(tag.id)
    return {"dataset": dataset.name, "deleted_reports": deleted}
