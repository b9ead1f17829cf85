"""Tags: create (creating the dataset when missing), update, delete. A dataset tagged from its tag titles
alone (a zero-shot head) is queued for a refit when they change, so its head follows them."""

from __future__ import annotations

from gateway.infra.outbox import OutboxEvent
from gateway.repository import Repository, TagLock
from gateway.schemas import CreateTagBody, DeleteTagOut, TagOutFull, UpdateTagBody
from gateway.uow import UnitOfWork
from shared.db.models import Dataset, Tag
from shared.errors import NotFound
from shared.schemas.events import TrainRequest
from shared.subjects import train_subject


def tag_not_found(tag_id: int) -> NotFound:
    return NotFound(f"tag {tag_id} not found", code="tag_not_found")


async def load_tag(repo: Repository, account_id: int, tag_id: int, lock: TagLock) -> tuple[Tag, Dataset]:
    found = (await repo.tags_of_account(account_id, [tag_id], lock)).get(tag_id)
    if found is None:
        raise tag_not_found(tag_id)
    return found


async def follow_titles(uow: UnitOfWork, dataset: Dataset) -> None:
    """Queue a refit (debounced like a report) when the live head was made from the tag titles: a new, renamed
    or deleted tag then reaches it without a train_dataset call. A head trained from reports is left alone."""
    if dataset.kind != "text" or dataset.head_version is None:
        return
    if await uow.repo.head_mode(dataset.id, dataset.head_version) == "zero_shot":
        message = TrainRequest(dataset_id=dataset.id, reason="titles")
        uow.stage(OutboxEvent(train_subject(dataset.id), f"train-{dataset.id}", message))


def _tag_out(tag: Tag) -> TagOutFull:
    return TagOutFull(title=tag.title, tag_id=tag.id, active=tag.active)


async def create_tag(uow: UnitOfWork, account_id: int, body: CreateTagBody) -> TagOutFull:
    dataset = await uow.repo.get_or_create_dataset(account_id, body.dataset)
    tag = await uow.repo.insert_tag(dataset.id, body.title)
    uow.dataset_changed(dataset.id)
    await follow_titles(uow, dataset)
    return _tag_out(tag)


async def update_tag(uow: UnitOfWork, account_id: int, body: UpdateTagBody) -> TagOutFull:
    tag, dataset = await load_tag(uow.repo, account_id, body.tag_id, "change")
    if body.dataset is not None and body.dataset != dataset.name:
        raise NotFound(f"tag {body.tag_id} not found in dataset '{body.dataset}'", code="tag_not_found")
    if body.title is not None or body.active is not None:
        uow.dataset_changed(dataset.id)
    if body.title is not None and body.title != tag.title:
        await follow_titles(uow, dataset)
    if "threshold" in body.model_fields_set:  # absent leaves it; null resets it to the learned one
        await uow.repo.set_threshold_override(tag.id, body.threshold)
        uow.dataset_changed(dataset.id)  # tagging's cached view carries the override to the model services
    return _tag_out(await uow.repo.update_tag(tag.id, body.title, body.active))


async def delete_tag(uow: UnitOfWork, account_id: int, tag_id: int) -> DeleteTagOut:
    tag, dataset = await load_tag(uow.repo, account_id, tag_id, "delete")
    deleted = await uow.repo.delete_tag(tag.id)
    uow.dataset_changed(dataset.id)
    await follow_titles(uow, dataset)
    return DeleteTagOut(dataset=dataset.name, deleted_reports=deleted)
