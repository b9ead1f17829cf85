"""Reports: report_text_tags, report_image_tags."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from gateway.deps import AccountDep, RepoDep, StateDep
from gateway.routes.common import api_router, post
from gateway.schemas import ImageReport, ReportOut, TextReport
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


def router() -> APIRouter:
    r = api_router()

    @post(
        r,
        "/api/report_text_tags",
        list[ReportOut],
        "Label texts; a later label of the same text and tag wins",
    )
    async def report_text_tags(
        body: Annotated[list[TextReport], Body(examples=[_TEXT_EXAMPLE])],
        repo: RepoDep,
        account: AccountDep,
        state: StateDep,
    ) -> list[dict[str, Any]]:
        return await reports.report_texts(repo, account, body, state.settings)

    @post(r, "/api/report_image_tags", list[ReportOut], "Label images (embedded and kept as a bounded copy)")
    async def report_image_tags(
        body: Annotated[list[ImageReport], Body(examples=[_IMAGE_EXAMPLE])],
        repo: RepoDep,
        account: AccountDep,
        state: StateDep,
    ) -> list[dict[str, Any]]:
        return await reports.report_images(repo, account, body, state.settings, state.bus)

    return r
