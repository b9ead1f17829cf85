"""Browsing and undo: list_items, an item's kept image, delete_report."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from gateway.deps import AccountDep, StateDep
from gateway.routes.common import api_router, post, render
from gateway.schemas import DeleteReportBody, DeleteReportOut, ListItemsBody, ListItemsOut
from gateway.service import items

ItemIdPath = Annotated[int, Path(ge=0, le=2**63 - 1, description="the item id (list_items, report answers)")]

# Ours are served by the same token as the API: a browser or proxy cache keeps them for that user only.
_CACHE_CONTROL = "private, max-age=86400"


async def list_items(body: ListItemsBody, account: AccountDep, state: StateDep) -> Response:
    return render(await state.transact(lambda uow: items.list_items(uow, account, body)))


async def item_image(item_id: ItemIdPath, request: Request, account: AccountDep, state: StateDep) -> Response:
    image = await state.transact(lambda uow: items.item_image(uow, account, item_id))
    headers = {"ETag": image.etag, "Cache-Control": _CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}
    if image.etag in {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers=headers)
    return Response(image.body, media_type=image.media_type, headers=headers)


async def delete_report(body: DeleteReportBody, account: AccountDep, state: StateDep) -> Response:
    return render(await state.transact(lambda uow: items.delete_report(uow, account, body)))


_IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the bounded copy kept when the image was reported: JPEG (quality 95), shorter side 256 "
        "pixels; ETag and Cache-Control: private",
        "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
    },
    304: {"description": "If-None-Match named the current ETag"},
    401: {"description": "missing or wrong token",
          "content": {"application/json": {"example": {"error": "unauthorized", "detail": "..."}}}},
    404: {"description": "no such item for this account, or a text item",
          "content": {"application/json": {"example": {"error": "item_not_found", "detail": "..."}}}},
}


def router() -> APIRouter:
    r = api_router()
    post(r, "/api/list_items", list_items, ListItemsOut,
         "A dataset's reported items, newest first, with their labels and report ids; pages continue with "
         "next_cursor (keyset: items reported meanwhile do not shift a page)")
    post(r, "/api/delete_report", delete_report, DeleteReportOut,
         "Delete a report, by its id or by item_id and tag_id (report answers name the item id); the next "
         "refit, queued as after a report, no longer sees it")
    for path, shown in (("/api/items/{item_id}/image", True), ("/api/items/{item_id}/image/", False)):
        r.add_api_route(path, item_image, methods=["GET"], response_class=Response, include_in_schema=shown,
                        summary="The kept copy of a reported image (JPEG), with the API token",
                        responses=_IMAGE_RESPONSES)
    return r
