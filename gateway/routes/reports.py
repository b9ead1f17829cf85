"""Reports: report_text_tags, report_image_tags."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response

from gateway.deps import AccountDep, StateDep
from gateway.routes.common import api_router, post, render
from gateway.schemas import NON_EMPTY, ImageReport, ReportOut, TextReport
from gateway.service import reports

_TEXT_EXAMPLE = [{"content": "پیشنهاد میکنم از این بخرید خیلی عالیه.", "tag_id": 39, "positive": True}]
_IMAGE_EXAMPLE = [
    {
        "image_url": "https://upload.wikimedia.org/wikipedia/fa/thumb/5/54/Tehran-Milad_Tower2.jpg/"
        "800px-Tehran-Milad_Tower2.jpg",
        "tag_id": 3,
        "positive": True,
    }
]


TextReports = Annotated[list[TextReport], Body(examples=[_TEXT_EXAMPLE], json_schema_extra=NON_EMPTY)]
ImageReports = Annotated[list[ImageReport], Body(examples=[_IMAGE_EXAMPLE], json_schema_extra=NON_EMPTY)]


async def report_text_tags(body: TextReports, account: AccountDep, state: StateDep) -> Response:
    return render(await state.transact(lambda uow: reports.report_texts(uow, account, body, state.settings)))


async def report_image_tags(body: ImageReports, account: AccountDep, state: StateDep) -> Response:
    # The service commits two short units of work around the images' fetching.
    return render(await reports.report_images(state, account, body))


def router() -> APIRouter:
    r = api_router()
    post(r, "/api/report_text_tags", report_text_tags, list[ReportOut],
         "Label texts; a later label of the same text and tag wins")
    post(r, "/api/report_image_tags", report_image_tags, list[ReportOut],
         "Label images (embedded and kept as a bounded copy)")
    return r
