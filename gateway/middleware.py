"""Outermost ASGI layer: correlation id, metrics, and the last-resort 500 without a trace."""

from __future__ import annotations

import re
import time

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http_errors import error_response
from gateway.http_metrics import HttpMetrics
from shared.logging import bind_correlation_id

log = structlog.get_logger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return "unmatched"
    return path.rstrip("/") or "/"


class RequestContextMiddleware:
    """Binds X-Request-Id (or a new id) for logs and the bus, returns it, and records the request."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(REQUEST_ID_HEADER)
        # A client's id is kept only when it is harmless in logs and headers.
        cid = bind_correlation_id(given if given and _SAFE_ID.match(given) else None)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = cid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled_error", path=scope.get("path"))
            if not response_started:
                response = error_response(500, "internal", "internal error", {REQUEST_ID_HEADER: cid})
                await response(scope, receive, send)
            status = 500
        finally:
            self.metrics.observe(
                route_label(scope), scope.get("method", ""), status, time.perf_counter() - started
            )
