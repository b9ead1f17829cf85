"""``ApiRoute``: what every /api call passes before its body is parsed, in this order: token (401; one that needs
a lookup first takes from its address's rate, 429), account rate (429), content type (415), body size while
reading (413); then FastAPI parses and validates the body (422) and the route runs, given ``AccountDep``."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Message, Receive

from gateway.deps import app_state
from gateway.service.auth import authenticate
from shared.errors import TooLarge, UnsupportedMedia

# Routes that also take multipart/form-data uploads.
MULTIPART_PATHS = frozenset({"/api/tag_images", "/api/tag_video_frames", "/api/report_image_tags"})


def media_kind(content_type: str | None) -> str:
    """ "json", "multipart" or "other"."""
    main = (content_type or "").split(";", 1)[0].strip().lower()
    if main == "application/json" or (main.startswith("application/") and main.endswith("+json")):
        return "json"
    if main == "multipart/form-data":
        return "multipart"
    return "other"


def _limited(receive: Receive, limit: int, setting: str) -> Receive:
    """A receive that raises TooLarge as soon as the body read so far passes ``limit``."""
    total = 0

    async def receive_limited() -> Message:
        nonlocal total
        message = await receive()
        if message["type"] == "http.request":
            total += len(message.get("body", b""))
            if total > limit:
                raise TooLarge(f"request body over the limit of {limit} bytes ({setting})")
        return message

    return receive_limited


class ApiRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        multipart_ok = self.path.rstrip("/") in MULTIPART_PATHS

        async def guarded(request: Request) -> Response:
            state = app_state(request)
            settings = state.settings
            address = request.client.host if request.client else "unknown"
            account_id = await authenticate(state, request.headers.get("authorization"), address)
            await state.limiter.check(account_id)
            request.state.account_id = account_id
            if request.method == "GET":  # a read with no body (an item's kept image): nothing more to check
                return await handler(request)
            kind = media_kind(request.headers.get("content-type"))
            if kind == "json":
                limit, setting = settings.max_body_bytes, "KASHF_MAX_BODY_BYTES"
            elif kind == "multipart" and multipart_ok:
                limit, setting = settings.max_upload_bytes, "KASHF_MAX_UPLOAD_BYTES"
            else:
                accepted = "application/json or multipart/form-data" if multipart_ok else "application/json"
                raise UnsupportedMedia(f"Content-Type must be {accepted}", code="unsupported_content_type")
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise TooLarge(f"request body over the limit of {limit} bytes ({setting})")
            limited = Request(request.scope, _limited(request.receive, limit, setting))
            if kind == "json":
                await limited.body()  # read (and size-check) now; FastAPI reuses the cached body
            return await handler(limited)

        return guarded
