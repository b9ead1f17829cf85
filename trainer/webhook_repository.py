"""Every SQL statement of webhook deliveries (``trainer.webhooks``): queue an event's rows, lock one to send it,
record an attempt, and find pending rows whose message may have been lost."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, literal, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import Dataset, Webhook, WebhookDelivery


@dataclass(frozen=True)
class Queued:
    """A delivery row just written, to publish."""

    id: int
    created_at: datetime


@dataclass(frozen=True)
class Due:
    """A pending delivery locked for sending, with its webhook's URL and secret and the database's clock."""

    id: int
    webhook_id: int
    url: str
    secret: str
    event: str
    payload: dict[str, Any]
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    now: datetime


async def queue_event(
    session: AsyncSession, dataset_id: int, event: str, payload: Callable[[str], Mapping[str, Any]]
) -> list[Queued]:
    """One pending row per webhook of the dataset's account subscribed to ``event`` (this dataset's, or every
    dataset's); ``payload(dataset name)`` is the body. None when the dataset is gone or nobody listens."""
    dataset = (await session.execute(
        select(Dataset.name, Dataset.account_id).where(Dataset.id == dataset_id)
    )).one_or_none()
    if dataset is None:
        return []
    name, account_id = dataset
    body = dict(payload(name))
    hooks = select(Webhook.id, literal(event), literal(body, WebhookDelivery.payload.type)).where(
        Webhook.account_id == account_id,
        (Webhook.dataset_id.is_(None)) | (Webhook.dataset_id == dataset_id),
        Webhook.events.contains([event]),
    )
    rows = await session.execute(
        insert(WebhookDelivery)
        .from_select([WebhookDelivery.webhook_id, WebhookDelivery.event, WebhookDelivery.payload], hooks)
        .returning(WebhookDelivery.id, WebhookDelivery.created_at)
    )
    return [Queued(int(i), created) for i, created in rows.all()]


async def lock_delivery(session: AsyncSession, delivery_id: int) -> Due | None:
    """The delivery with its webhook, row-locked until the transaction ends; None when another transaction holds
    it (skipped, not waited for) or it is gone (see ``delivery_exists``)."""
    row = (await session.execute(
        select(WebhookDelivery, Webhook.url, Webhook.secret, func.now())
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(WebhookDelivery.id == delivery_id)
        .with_for_update(of=WebhookDelivery, skip_locked=True)
    )).one_or_none()
    if row is None:
        return None
    d, url, secret, now = row
    return Due(d.id, d.webhook_id, url, secret, d.event, dict(d.payload), d.state, d.attempts, d.last_status,
               d.last_error, d.created_at, d.updated_at, now)


async def delivery_exists(session: AsyncSession, delivery_id: int) -> bool:
    return await session.scalar(select(WebhookDelivery.id).where(WebhookDelivery.id == delivery_id)) is not None


async def record_attempt(
    session: AsyncSession, delivery_id: int, *, state: str, attempts: int, status: int | None, error: str | None
) -> None:
    await session.execute(
        update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(
            state=state, attempts=attempts, last_status=status, last_error=error, updated_at=func.now(),
        )
    )


async def overdue(session: AsyncSession, *, delay_s: float, max_delay_s: float, grace_s: float,
                  limit: int = 500) -> list[Queued]:
    """Pending deliveries ``grace_s`` past their due time (their first try, or the last one's backoff): their
    message was lost, or is late. Publishing them again is harmless (sending locks the row and checks it)."""
    def seconds(value: Any) -> Any:
        return func.make_interval(0, 0, 0, 0, 0, 0, value)

    backoff = func.least(delay_s * func.power(2, WebhookDelivery.attempts - 1), max_delay_s)
    first_try_late = (WebhookDelivery.attempts == 0) & (WebhookDelivery.created_at < func.now() - seconds(grace_s))
    retry_late = (WebhookDelivery.attempts > 0) & (
        WebhookDelivery.updated_at < func.now() - seconds(backoff + grace_s))
    rows = await session.execute(
        select(WebhookDelivery.id, WebhookDelivery.created_at)
        .where(WebhookDelivery.state == "pending", first_try_late | retry_late)
        .order_by(WebhookDelivery.id)
        .limit(limit)
    )
    return [Queued(int(i), created) for i, created in rows.all()]
