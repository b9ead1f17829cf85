"""Tagging: tag_texts (JSON), tag_images and tag_video_frames (JSON URLs or multipart uploads)."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from gateway import blobs
from gateway.deps import AccountDep, StateDep, account_of, app_state
from gateway.routes.common import api_router, parse_body
from gateway.routes.common import post as post_route
from gateway.routing import media_kind
from gateway.schemas import (
    DatasetBody,
    ImageTagsOut,
    TagImagesBody,
    TagTextsBody,
    TagVideoBody,
    TextTagsOut,
    VideoParams,
    VideoTagsOut,
)
from gateway.service import tagging, video_jobs
from gateway.service.limits import check_count
from gateway.state import AppState
from shared.errors import BadRequest, TooLarge
from shared.schemas.media import MediaInput


def _body_doc(model: type[Any], upload_field: str, extra_fields: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI for a body that is JSON or multipart/form-data."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": model.model_json_schema()},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["dataset", upload_field],
                        "properties": {
                            "dataset": {"type": "string"},
                            upload_field: {"type": "array", "items": {"type": "string", "format": "binary"}},
                            **extra_fields,
                        },
                    }
                },
            },
        }
    }


async def _read_form(request: Request, state: AppState) -> FormData:
    try:
        return await request.form(max_files=state.settings.max_items, max_fields=32)
    except HTTPException as exc:
        if "files" in str(exc.detail):
            raise TooLarge(f"more than {state.settings.max_items} files (KASHF_MAX_ITEMS)") from exc
        raise BadRequest(f"malformed multipart body: {exc.detail}") from exc


# Inline uploads per request, raw bytes: base64 makes 512 KiB about 683 KiB, well under NATS' 1 MiB.
_INLINE_FILE_BYTES = 256 * 1024
_INLINE_TOTAL_BYTES = 512 * 1024


async def _upload(
    state: AppState, form: FormData, field: str, max_bytes: int, setting: str
) -> list[tuple[str, str, MediaInput]]:
    """(answer key, file name, ref) per uploaded file of ``field``.

    Small files travel inline in the model request (measured: the object store round trip was most of
    the gateway's cost per small upload); the rest go to the blob store, since NATS payloads stay under 1 MiB.
    """
    files = [f for f in form.getlist(field) if isinstance(f, UploadFile)]
    check_count(files, field, state.settings)
    refs: list[tuple[str, str, MediaInput]] = []
    inline_left = _INLINE_TOTAL_BYTES
    try:
        for upload in files:
            name = upload.filename or field
            if upload.size is not None and upload.size > max_bytes:
                raise TooLarge(f"{field} '{name}' is over the limit of {max_bytes} bytes ({setting})")
            data = await upload.read()
            if len(data) > max_bytes:
                raise TooLarge(f"{field} '{name}' is over the limit of {max_bytes} bytes ({setting})")
            if len(data) <= min(_INLINE_FILE_BYTES, inline_left):
                inline_left -= len(data)
                refs.append((field, name, MediaInput(data=base64.b64encode(data), name=name)))
                continue
            key = await blobs.put_blob(state.bus.js, data)
            refs.append((field, name, MediaInput(blob_key=key, name=name)))
    except BaseException:
        await blobs.delete_blobs(state.bus.js, [ref.blob_key for _, _, ref in refs if ref.blob_key])
        raise
    return refs


def _fields(form: FormData, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: value for name in names if isinstance(value := form.get(name), str)}


def router() -> APIRouter:
    r = api_router()

    @post_route(r, "/api/tag_texts", list[TextTagsOut], "Tag texts with the dataset's active tags")
    async def tag_texts(body: TagTextsBody, request: Request) -> Response:
        # No dependencies past the body: state and account come off the request, and the answer is
        # rendered as JSON directly (this is the hottest route; measured in bench/text.py).
        return JSONResponse(await tagging.tag_texts(app_state(request), account_of(request), body))

    @post_route(
        r,
        "/api/tag_images",
        list[ImageTagsOut],
        "Tag images by URL (JSON) or upload (multipart image_file parts)",
        openapi_extra=_body_doc(TagImagesBody, "image_file", {}),
    )
    async def tag_images(request: Request, account: AccountDep, state: StateDep) -> list[dict[str, Any]]:
        settings = state.settings
        if media_kind(request.headers.get("content-type")) == "json":
            body = parse_body(TagImagesBody, await request.body())
            images = [("image_url", url, MediaInput(url=url)) for url in body.image_urls]
            return await tagging.tag_images(state, account, body.dataset, images)
        form = await _read_form(request, state)
        try:
            dataset = parse_body(DatasetBody, _fields(form, ("dataset",))).dataset
            uploads = await _upload(
                state, form, "image_file", settings.max_image_bytes, "KASHF_MAX_IMAGE_BYTES"
            )
        finally:
            await form.close()
        try:
            return await tagging.tag_images(state, account, dataset, uploads)
        finally:
            await blobs.delete_blobs(state.bus.js, [ref.blob_key for _, _, ref in uploads if ref.blob_key])

    @post_route(
        r,
        "/api/tag_video_frames",
        list[VideoTagsOut],
        "Tag sampled video frames by URL (JSON) or upload (multipart video_file parts)",
        openapi_extra=_body_doc(
            TagVideoBody,
            "video_file",
            {
                "every_ms": {"type": "integer"},
                "duration": {"type": "number"},
                "min_frame_diff": {"type": "number"},
                "async": {"type": "boolean"},
            },
        ),
    )
    async def tag_video_frames(
        request: Request, account: AccountDep, state: StateDep
    ) -> list[dict[str, Any]] | dict[str, Any]:
        settings = state.settings
        if media_kind(request.headers.get("content-type")) == "json":
            body = parse_body(TagVideoBody, await request.body())
            tagging.check_video_params(body)
            videos = [("video_url", url, MediaInput(url=url)) for url in body.video_urls]
            if body.async_:
                return await video_jobs.submit_videos(state, account, body, videos)
            return await tagging.tag_videos(state, account, body, videos)
        form = await _read_form(request, state)
        try:
            params = parse_body(
                VideoParams, _fields(form, ("dataset", "every_ms", "duration", "min_frame_diff", "async"))
            )
            tagging.check_video_params(params)
            uploads = await _upload(
                state, form, "video_file", settings.max_video_bytes, "KASHF_MAX_VIDEO_BYTES"
            )
        finally:
            await form.close()
        if params.async_:
            # The job owns the uploads now: video_service deletes them when the job ends.
            return await video_jobs.submit_videos(state, account, params, uploads)
        try:
            return await tagging.tag_videos(state, account, params, uploads)
        finally:
            await blobs.delete_blobs(state.bus.js, [ref.blob_key for _, _, ref in uploads if ref.blob_key])

    return r
