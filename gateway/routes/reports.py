"""Reports: report_text_tags, report_image_tags (JSON URLs or multipart uploads)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from gateway.deps import AccountDep, StateDep
from gateway.routes.common import api_router, parse_body, post, render
from gateway.routes.guard import media_kind
from gateway.routes.uploads import delete_uploads, form_fields, read_form, upload_each
from gateway.schemas import (
    NON_EMPTY,
    ImageFileReport,
    ImageReport,
    ItemReport,
    MediaItem,
    ReportFileOut,
    ReportOut,
    TextReport,
)
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


async def report_text_tags(body: TextReports, account: AccountDep, state: StateDep) -> Response:
    return render(await state.transact(lambda uow: reports.report_texts(uow, account, body, state.settings)))


_ITEM_EXAMPLE = [{"item_id": 1211593, "tag_id": 3, "positive": True}]
ItemReports = Annotated[list[ItemReport], Body(examples=[_ITEM_EXAMPLE], json_schema_extra=NON_EMPTY)]


async def report_items(body: ItemReports, account: AccountDep, state: StateDep) -> Response:
    return render(await state.transact(lambda uow: reports.report_items(uow, account, body, state.settings)))


_IMAGE_REPORTS = TypeAdapter(list[ImageReport])
_FILE_FIELDS = ("tag_id", "positive", "dataset")


def _image_reports(raw: bytes) -> list[ImageReport]:
    """The JSON body, parsed and validated as FastAPI does for a declared body (same errors, 422)."""
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": exc.msg}}]) from exc
    try:
        return _IMAGE_REPORTS.validate_python(data, from_attributes=True)  # as FastAPI validates a body
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc


async def report_image_tags(request: Request, account: AccountDep, state: StateDep) -> Response:
    if media_kind(request.headers.get("content-type")) == "json":
        body = _image_reports(await request.body())
        # The service commits two short units of work around the images' fetching.
        return render(await reports.report_images(state, account, body))
    form = await read_form(request, state.settings)
    try:
        # Form values are strings ("3", "false"): parsed leniently, where JSON bodies are strict.
        fields = parse_body(ImageFileReport, form_fields(form, _FILE_FIELDS), strict=False)
        files = await upload_each(
            state, form, "image_file", state.settings.max_image_bytes, "KASHF_MAX_IMAGE_BYTES"
        )
    finally:
        await form.close()
    try:
        return render(await reports.report_image_files(state, account, fields, files))
    finally:
        await delete_uploads(state, [f for f in files if isinstance(f, MediaItem)])


def _image_body_doc() -> dict[str, Any]:
    """OpenAPI: a JSON list of URL reports, or a form of image_file parts with one label."""
    form = ImageFileReport.model_json_schema()
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "array", "items": ImageReport.model_json_schema(), **NON_EMPTY},
                    "example": _IMAGE_EXAMPLE,
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["tag_id", "image_file"],
                        "properties": {
                            **form["properties"],
                            "image_file": {"type": "array", "items": {"type": "string", "format": "binary"},
                                           "minItems": 1},
                        },
                    },
                    "example": {"tag_id": 3, "positive": "true", "image_file": ["milad.jpg", "azadi.jpg"]},
                },
            },
        }
    }


def router() -> APIRouter:
    r = api_router()
    post(r, "/api/report_text_tags", report_text_tags, list[ReportOut],
         "Label texts; a later label of the same text and tag wins")
    post(r, "/api/report_image_tags", report_image_tags, list[ReportOut] | list[ReportFileOut],
         "Label images by URL (JSON) or upload (multipart image_file parts; an element per file, a file's "
         "own failure as its error); each is embedded and kept as a bounded copy",
         openapi_extra=_image_body_doc())
    post(r, "/api/report_items", report_items, list[ReportOut],
         "Label stored items by id (from list_items, suggest_labels or search), texts and images alike; "
         "nothing is re-sent, fetched or embedded again")
    return r
