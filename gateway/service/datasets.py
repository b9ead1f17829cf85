"""Datasets: creation, listing, training requests and the dataset_info summary."""

from __future__ import annotations

from typing import Any

from gateway.infra.outbox import OutboxEvent
from gateway.infra.predictions import PredictionCounter
from gateway.repository import Repository
from gateway.schemas import (
    Confusion,
    CreateDatasetBody,
    DatasetEvaluation,
    DatasetInfoBody,
    DatasetInfoOut,
    DatasetOut,
    TagEvaluation,
    TagInfo,
    TrainOut,
    UpdateDatasetBody,
)
from gateway.uow import UnitOfWork
from shared.db.models import Dataset
from shared.errors import BadRequest, NotFound
from shared.schemas.events import TrainRequest
from shared.subjects import train_subject

_NOUN = {"text": "texts", "image": "images"}


async def load_dataset(repo: Repository, account_id: int, name: str) -> Dataset:
    """The account's dataset of that name; NotFound otherwise (also for other accounts' datasets)."""
    dataset = await repo.dataset_by_name(account_id, name)
    if dataset is None:
        raise NotFound(f"dataset '{name}' not found", code="dataset_not_found")
    return dataset


async def fix_kind(uow: UnitOfWork, dataset: Dataset, kind: str) -> str:
    """The dataset's kind, set to ``kind`` on first use (a change tagging's cached view must see)."""
    if dataset.kind is not None:
        return dataset.kind
    uow.dataset_changed(dataset.id)
    return await uow.repo.fix_kind(dataset, kind)


async def ensure_kind(uow: UnitOfWork, dataset: Dataset, kind: str) -> None:
    """Fix the dataset's kind on first use; BadRequest when it holds the other kind."""
    if await fix_kind(uow, dataset, kind) != kind:
        raise wrong_kind(dataset.name, dataset.kind, kind)


def wrong_kind(name: str, has: str | None, wanted: str) -> BadRequest:
    return BadRequest(
        f"dataset '{name}' holds {_NOUN.get(has or '', has)}, not {_NOUN.get(wanted, wanted)}",
        code="wrong_dataset_kind",
    )


def dataset_out(dataset: Dataset) -> DatasetOut:
    return DatasetOut(dataset=dataset.name, title=dataset.title, kind=dataset.kind, state=dataset.state,
                      keep_inputs=dataset.keep_inputs)


async def create_dataset(uow: UnitOfWork, account_id: int, body: CreateDatasetBody) -> DatasetOut:
    created = await uow.repo.insert_dataset(account_id, body.dataset, body.title or body.dataset, body.kind)
    if created is None:
        raise BadRequest(f"dataset '{body.dataset}' already exists", code="dataset_exists")
    if body.keep_inputs:
        created = await uow.repo.update_dataset(created.id, None, True)
    return dataset_out(created)


async def update_dataset(uow: UnitOfWork, account_id: int, body: UpdateDatasetBody) -> DatasetOut:
    dataset = await load_dataset(uow.repo, account_id, body.dataset)
    uow.dataset_changed(dataset.id)  # tagging's cached view holds keep_inputs
    return dataset_out(await uow.repo.update_dataset(dataset.id, body.title, body.keep_inputs))


async def list_datasets(uow: UnitOfWork, account_id: int) -> list[DatasetOut]:
    return [dataset_out(d) for d in await uow.repo.list_datasets(account_id)]


async def train_dataset(uow: UnitOfWork, account_id: int, name: str, request_id: str,
                        force: bool = False) -> TrainOut:
    """Mark the dataset waiting and queue a TrainRequest through the outbox (one transaction). ``force``: the
    trainer refits even with nothing changed and makes the fit live past the promotion gate."""
    dataset = await load_dataset(uow.repo, account_id, name)
    await uow.repo.mark_waiting(dataset.id)
    message = TrainRequest(dataset_id=dataset.id, reason="api", request_id=request_id, force=force)
    uow.stage(OutboxEvent(train_subject(dataset.id), f"train-{dataset.id}", message))
    return TrainOut(dataset=dataset.name, state="waiting")


def _figures(evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if evaluation is None else {key: evaluation.get(key) for key in ("recall", "precision", "f1")}


async def _tags_info(uow: UnitOfWork, dataset_id: int, counter: PredictionCounter) -> list[TagInfo]:
    out = []
    for tag, reports in await uow.repo.tags_with_report_counts(dataset_id):
        figures = _figures(tag.evaluation)
        evaluation = None if figures is None else TagEvaluation.model_validate(figures)
        predictions = tag.predictions + counter.pending(tag.id)  # what is counted but not yet written, too
        threshold = tag.threshold_override if tag.threshold_override is not None else tag.threshold
        out.append(TagInfo(title=tag.title, id=tag.id, reports=reports, predictions=predictions, evaluation=evaluation,
                           threshold=None if threshold is None else round(threshold, 4)))
    return out


async def dataset_info(
    uow: UnitOfWork, account_id: int, body: DatasetInfoBody, counter: PredictionCounter
) -> DatasetInfoOut:
    dataset = await load_dataset(uow.repo, account_id, body.dataset)
    reports, items = await uow.repo.dataset_counts(dataset.id)
    figures = _figures(dataset.evaluation)
    return DatasetInfoOut(
        title=dataset.title,
        state=dataset.state,
        report_count=reports,
        data_count=items,
        evaluation=None if figures is None else DatasetEvaluation.model_validate(figures),
        tags=await _tags_info(uow, dataset.id, counter) if body.tags else None,
        version=dataset.head_version,
        suggestions=await uow.repo.open_suggestions(dataset.id),
        confusion=confusion(await uow.repo.version_confusion(dataset.id, dataset.head_version)
                            if dataset.head_version is not None else None),
        mode=None if dataset.head_version is None else await uow.repo.head_mode(dataset.id, dataset.head_version),
    )


def confusion(stored: dict[str, Any] | None) -> Confusion | None:
    """A version's stored confusion counts (trainer.fitresult.FitResult.confusion), null for one without."""
    return None if stored is None else Confusion.model_validate(stored)
