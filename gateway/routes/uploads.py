"""Multipart uploads of the tag routes: the form, its files as ``MediaItem``s, and their OpenAPI body."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from gateway.schemas import MediaItem, RejectedFile
from gateway.service.checks import check_count
from gateway.state import AppState
from shared.bus.blobs import BlobStore
from shared.errors import BadRequest, TooLarge
from shared.schemas.media import MediaInput
from shared.settings import GatewaySettings

# Inline uploads per request, raw bytes: base64 makes 512 KiB about 683 KiB, well under NATS' 1 MiB.
_INLINE_FILE_BYTES = 256 * 1024
_INLINE_TOTAL_BYTES = 512 * 1024


def body_doc(model: type[Any], upload_field: str, fields: tuple[str, ...]) -> dict[str, Any]:
    """OpenAPI for a body that is JSON or multipart/form-data; the form ``fields`` are the JSON body's."""
    schema = model.model_json_schema()
    files = {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["dataset", upload_field],
                        "properties": {
                            **{name: schema["properties"][name] for name in fields},
                            upload_field: files,
                        },
                    }
                },
            },
        }
    }


async def read_form(request: Request, settings: GatewaySettings) -> FormData:
    try:
        return await request.form(max_files=settings.max_items, max_fields=32)
    except HTTPException as exc:
        if "files" in str(exc.detail):
            raise TooLarge(f"more than {settings.max_items} files (KASHF_MAX_ITEMS)") from exc
        raise BadRequest(f"malformed multipart body: {exc.detail}") from exc


def form_fields(form: FormData, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: value for name in names if isinstance(value := form.get(name), str)}


async def upload(state: AppState, form: FormData, field: str, max_bytes: int, setting: str) -> list[MediaItem]:
    """The uploaded files of ``field``, in order. Small files travel inline in the model request (measured:
    the object store round trip was most of the gateway's cost per small upload); the rest go to the blob
    store, since NATS payloads stay under 1 MiB."""
    files = [f for f in form.getlist(field) if isinstance(f, UploadFile)]
    check_count(files, field, state.settings)
    items: list[MediaItem] = []
    inline_left = _INLINE_TOTAL_BYTES
    try:
        for file in files:
            name = file.filename or field
            if file.size is not None and file.size > max_bytes:
                raise TooLarge(f"{field} '{name}' is over the limit of {max_bytes} bytes ({setting})")
            data = await file.read()
            if len(data) > max_bytes:
                raise TooLarge(f"{field} '{name}' is over the limit of {max_bytes} bytes ({setting})")
            if len(data) <= min(_INLINE_FILE_BYTES, inline_left):
                inline_left -= len(data)
                items.append(MediaItem(name, MediaInput(data=base64.b64encode(data), name=name), uploaded=True))
                continue
            key = await BlobStore(state.bus.js).put(data)
            items.append(MediaItem(name, MediaInput(blob_key=key, name=name), uploaded=True))
    except BaseException:
        await delete_uploads(state, items)
        raise
    return items


async def delete_uploads(state: AppState, items: list[MediaItem]) -> None:
    """Best effort: the blob store's TTL removes what is left."""
    await BlobStore(state.bus.js).delete([item.ref.blob_key for item in items if item.ref.blob_key])


async def upload_each(
    state: AppState, form: FormData, field: str, max_bytes: int, setting: str
) -> list[MediaItem | RejectedFile]:
    """Like ``upload``, but a file over ``max_bytes`` is refused on its own (a ``RejectedFile``, never sent)
    rather than failing the request: report_image_tags answers per file."""
    files = [f for f in form.getlist(field) if isinstance(f, UploadFile)]
    check_count(files, field, state.settings)
    out: list[MediaItem | RejectedFile] = []
    inline_left = _INLINE_TOTAL_BYTES
    try:
        for file in files:
            name = file.filename or field
            over = RejectedFile(name, f"over the limit of {max_bytes} bytes ({setting})")
            if file.size is not None and file.size > max_bytes:  # not even read
                out.append(over)
                continue
            data = await file.read()
            if len(data) > max_bytes:
                out.append(over)
            elif len(data) <= min(_INLINE_FILE_BYTES, inline_left):
                inline_left -= len(data)
                out.append(MediaItem(name, MediaInput(data=base64.b64encode(data), name=name), uploaded=True))
            else:
                key = await BlobStore(state.bus.js).put(data)
                out.append(MediaItem(name, MediaInput(blob_key=key, name=name), uploaded=True))
    except BaseException:
        await delete_uploads(state, [item for item in out if isinstance(item, MediaItem)])
        raise
    return out
