"""Head versions: list_versions and use_version (make a stored version live again: rollback, or a held fit).

The trainer stores every fit as a version (trainer.service); the dataset's ``head_version`` names the live one.
Changing it reaches the model services like a new fit does: the unit of work drops tagging's cached view of the
dataset here and, by broadcast, in every replica, and the next tag request names the version to load."""

from __future__ import annotations

from gateway.infra.predictions import PredictionCounter
from gateway.schemas import DatasetInfoBody, DatasetInfoOut, TagEvaluation, UseVersionBody, VersionOut
from gateway.service.datasets import confusion, dataset_info, load_dataset
from gateway.uow import UnitOfWork
from shared.db.models import HeadVersion
from shared.errors import BadRequest, NotFound


def _state(row: HeadVersion, live: int | None) -> str:
    if row.version == live:
        return "live"
    return "held" if row.held else "kept"


def _evaluation(row: HeadVersion) -> TagEvaluation | None:
    if row.evaluation is None:  # fitted before versions carried their figures
        return None
    return TagEvaluation.model_validate({key: row.evaluation.get(key) for key in ("recall", "precision", "f1")})


async def list_versions(uow: UnitOfWork, account_id: int, name: str) -> list[VersionOut]:
    dataset = await load_dataset(uow.repo, account_id, name)
    return [
        VersionOut(version=row.version, created=row.created_at.isoformat(), state=_state(row, dataset.head_version),
                   report_count=row.report_count, evaluation=_evaluation(row), confusion=confusion(row.confusion),
                   mode=row.mode, pseudo_labels=row.pseudo_labels)
        for row in await uow.repo.head_versions(dataset.id)
    ]


async def use_version(uow: UnitOfWork, account_id: int, body: UseVersionBody,
                      counter: PredictionCounter) -> DatasetInfoOut:
    """Make ``body.version`` live with the thresholds and figures it learned; answers dataset_info."""
    dataset = await load_dataset(uow.repo, account_id, body.dataset)
    # The row lock waits for a trainer's commit or retention pass of this dataset, so the version read
    # next cannot be deleted before this work commits.
    await uow.repo.lock_dataset(dataset.id)
    row = await uow.repo.head_version(dataset.id, body.version)
    if row is None:
        raise NotFound(f"version {body.version} of dataset '{body.dataset}' not found (list_versions shows them)",
                       code="version_not_found")
    if dataset.model_id is not None and row.model_id != dataset.model_id:
        # The model services embed with the live head's model: a head of another one cannot answer there.
        raise BadRequest(f"version {body.version} was fitted for the model {row.model_id}, the live head for "
                         f"{dataset.model_id}: train the dataset instead", code="version_model_mismatch")
    await uow.repo.make_live(dataset.id, row)
    uow.dataset_changed(dataset.id)
    await uow.session.flush()
    uow.session.expire_all()  # dataset_info reads the rows as they are now
    return await dataset_info(uow, account_id, DatasetInfoBody(dataset=body.dataset), counter)
