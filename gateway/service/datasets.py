"""Datasets: creation, listing, training requests and the dataset_info summary."""

from __future__ import annotations

from typing import Any

from gateway import outbox
from gateway.predictions import PredictionCounter
from gateway.repository import Repository
from gateway.schemas import CreateDatasetBody, DatasetInfoBody
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


async def ensure_kind(repo: Repository, dataset: Dataset, kind: str) -> None:
    """Fix the dataset's kind on first use; BadRequest when it holds the other kind."""
    if dataset.kind is None:
        await repo.fix_kind(dataset, kind)
    if dataset.kind != kind:
        raise wrong_kind(dataset.name, dataset.kind, kind)


def wrong_kind(name: str, has: str | None, wanted: str) -> BadRequest:
    return BadRequest(
        f"dataset '{name}' holds {_NOUN.get(has or '', has)}, not {_NOUN.get(wanted, wanted)}",
        code="wrong_dataset_kind",
    )


def dataset_out(dataset: Dataset) -> dict[str, Any]:
    return {"dataset": dataset.name, "title": dataset.title, "kind": dataset.kind, "state": dataset.state}


async def create_dataset(repo: Repository, account_id: int, body: CreateDatasetBody) -> dict[str, Any]:
    created = await repo.insert_dataset(account_id, body.dataset, body.title or body.dataset, body.kind)
    if created is None:
        raise BadRequest(f"dataset '{body.dataset}' already exists", code="dataset_exists")
    return dataset_out(created)


async def list_datasets(repo: Repository, account_id: int) -> list[dict[str, Any]]:
    return [dataset_out(d) for d in await repo.list_datasets(account_id)]


async def train_dataset(repo: Repository, account_id: int, name: str, request_id: str) -> dict[str, Any]:
    """Mark the dataset waiting and queue a TrainRequest through the outbox (one transaction)."""
    dataset = await load_dataset(repo, account_id, name)
    await repo.mark_waiting(dataset.id)
    message = TrainRequest(dataset_id=dataset.id, reason="api", request_id=request_id)
    await outbox.stage(repo, [(train_subject(dataset.id), f"train-{dataset.id}", message)])
    return {"dataset": dataset.name, "state": "waiting"}


def _figures(evaluation: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
    if evaluation is None:
        return None
    return {key: evaluation.get(key) for key in keys}


async def dataset_info(
    repo: Repository, account_id: int, body: DatasetInfoBody, counter: PredictionCounter
) -> dict[str, Any]:
    dataset = await load_dataset(repo, account_id, body.dataset)
    reports, items = await repo.dataset_counts(dataset.id)
    info: dict[str, Any] = {
        "title": dataset.title,
        "state": dataset.state,
        "report_count": reports,
        "data_count": items,
        "evaluation": _figures(dataset.evaluation, ("recall", "precision")),
    }
    if body.tags:
        info["tags"] = [
            {
                "title": tag.title,
                "id": tag.id,
                "reports": n,
                "predictions": tag.predictions + counter.pending(tag.id),
                "evaluation": _figures(tag.evaluation, ("recall", "precision", "f1")),
            }
            for tag, n in await repo.tags_with_report_counts(dataset.id)
        ]
    return info
