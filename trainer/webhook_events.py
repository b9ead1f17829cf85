"""Training events for the accounts' webhooks: queued in the transaction that makes them true, published after.

``queue_training_event`` writes one pending ``webhook_delivery`` row per subscribed webhook inside the caller's
transaction: the one that commits a fit (``Trainer._commit``) or records a failure (``Trainer.mark``), so an
event exists exactly when what it announces does, whatever crash follows. ``publish`` then sends a message per
row to ``KASHF_WEBHOOKS`` (its id fixed by the row, so JetStream drops a copy); a row whose message never went
(the process died, the stream did not answer) is published again by ``WebhookWorker``'s sweep."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict
from sqlalchemy.ext.asyncio import AsyncSession

from shared import subjects
from shared.bus import Bus
from shared.errors import KashfError
from trainer import webhook_repository as repo
from trainer.webhook_repository import Queued

log = structlog.get_logger(__name__)

FINISHED = "training.finished"
FAILED = "training.failed"


class WebhookDue(BaseModel):
    """The message of one delivery: the row says the rest."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    delivery_id: int


def message_id(delivery: Queued) -> str:
    # Row ids start over after a restore or a recreated database (tests truncate): the creation time keeps an
    # id unique for all time, so JetStream's duplicate window never drops a new delivery as an old one.
    return f"webhook-{delivery.id}-{int(delivery.created_at.timestamp() * 1_000_000)}"


async def queue_training_event(session: AsyncSession, dataset_id: int, event: str, *, state: str,
                               version: int | None, evaluation: Mapping[str, Any] | None) -> list[Queued]:
    """The rows of ``event`` for every subscribed webhook, written in ``session``'s transaction (to publish
    once it commits)."""
    at = datetime.now(UTC).isoformat(timespec="milliseconds")

    def payload(dataset: str) -> dict[str, Any]:
        return {"event": event, "dataset": dataset, "version": version, "state": state,
                "evaluation": None if evaluation is None else dict(evaluation), "at": at}

    return await repo.queue_event(session, dataset_id, event, payload)


async def publish(bus: Bus, queued: Sequence[Queued]) -> int:
    """Publish a message per committed row; one the stream did not take stays pending for the sweep. How many
    went."""
    sent = 0
    for delivery in queued:
        try:
            await bus.publish_event(subjects.WEBHOOKS_SUBJECT, WebhookDue(delivery_id=delivery.id),
                                    msg_id=message_id(delivery))
            sent += 1
        except KashfError:
            log.warning("webhook_publish_failed", delivery_id=delivery.id)
    return sent
