"""Browsing and undo: a dataset's reported items newest first (keyset pages), an item's kept image copy,
and deleting a report (the next refit no longer sees it)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from gateway.infra.outbox import OutboxEvent
from gateway.schemas import DeleteReportBody, DeleteReportOut, ItemOut, ListItemsBody, ListItemsOut
from gateway.service.datasets import load_dataset
from gateway.service.tags import tag_not_found
from gateway.uow import UnitOfWork
from shared.errors import BadRequest, NotFound
from shared.schemas.events import ReportEvent
from shared.subjects import report_subject

# The cursor names the last item id shown, versioned so that its form may change later.
_CURSOR_PREFIX = "k1:"


def image_path(item_id: int) -> str:
    return f"/api/items/{item_id}/image"


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The item id a cursor continues below; BadRequest (400) for one this server did not give out."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    number = text.removeprefix(_CURSOR_PREFIX)
    if not text.startswith(_CURSOR_PREFIX) or not number.isdigit() or not 0 < int(number) < 2**63:
        raise BadRequest("cursor is not one list_items gave out; pass next_cursor unchanged", code="bad_cursor")
    return int(number)


async def list_items(uow: UnitOfWork, account_id: int, body: ListItemsBody) -> ListItemsOut:
    before_id = decode_cursor(body.cursor) if body.cursor is not None else None
    dataset = await load_dataset(uow.repo, account_id, body.dataset)
    if body.tag_id is not None:
        found = await uow.repo.tags_of_account(account_id, [body.tag_id])
        if body.tag_id not in found or found[body.tag_id][1].id != dataset.id:
            raise NotFound(f"tag {body.tag_id} not found in dataset '{body.dataset}'", code="tag_not_found")
    # One row more than the page: whether there is a next page, without a count.
    rows = await uow.repo.items_page(dataset.id, body.tag_id, before_id, body.limit + 1)
    page = rows[: body.limit]
    reports = await uow.repo.item_reports([row.id for row in page])
    items = [
        ItemOut(
            id=row.id,
            content=row.content if row.kind == "text" else None,
            image=image_path(row.id) if row.kind == "image" else None,
            reports=[(tag_id, positive) for _, tag_id, positive in reports[row.id]],
            report_ids=[report_id for report_id, _, _ in reports[row.id]],
            created=row.created_at.isoformat(),
        )
        for row in page
    ]
    more = len(rows) > body.limit
    return ListItemsOut(items=items, next_cursor=encode_cursor(page[-1].id) if more else None)


@dataclass(frozen=True)
class ItemImage:
    body: bytes
    media_type: str
    etag: str


async def item_image(uow: UnitOfWork, account_id: int, item_id: int) -> ItemImage:
    """The bounded copy kept when the image was reported (JPEG, shorter side 256)."""
    row = await uow.repo.item_media(account_id, item_id)
    if row is None:
        raise NotFound(f"item {item_id} has no image", code="item_not_found")
    # The copy is written once with the item: the original's hash names it for as long as the item lives.
    return ItemImage(row.media, row.media_type, f'"{row.content_hash}"')


async def delete_report(uow: UnitOfWork, account_id: int, body: DeleteReportBody) -> DeleteReportOut:
    """Delete one report; the trainer hears of it like of a new report, and its next head is fitted without it."""
    row = await uow.repo.delete_report(account_id, body.id, body.item_id, body.tag_id)
    if row is None:
        if body.id is not None:
            raise NotFound(f"report {body.id} not found", code="report_not_found")
        if not await uow.repo.tags_of_account(account_id, [body.tag_id or 0]):
            raise tag_not_found(body.tag_id or 0)
        raise NotFound(f"item {body.item_id} has no report of tag {body.tag_id}", code="report_not_found")
    # The trainer reads only the dataset of a report event: it debounces a refit as after any report.
    event = ReportEvent(report_id=row["id"], dataset_id=row["dataset_id"], item_id=row["item_id"],
                        tag_id=row["tag_id"], positive=row["positive"])
    uow.stage(OutboxEvent(report_subject(row["dataset_id"]), f"report-{row['id']}-deleted", event))
    return DeleteReportOut(id=row["id"])
