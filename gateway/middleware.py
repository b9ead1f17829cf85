"""Outermost ASGI layer: correlation id, metrics, a deadline on the request body, clients that went away, and
the last-resort 500 without a trace."""

from __future__ import annotations

import asyncio
import re
import time

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http_errors import error_response
from gateway.http_metrics import HttpMetrics
from shared.errors import KashfError
from shared.logging import bind_correlation_id

log = structlog.get_logger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
CLIENT_GONE = 499  # nginx's status for a client that closed the connection before the answer


class RequestTimeout(KashfError):
    status = 408
    code = "request_timeout"


def route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return "unmatched"
    return path.rstrip("/") or "/"


class BodyDeadline:
    """The request body must arrive within ``timeout_s`` plus one second per ``min_rate`` bytes received; a slower
    body raises RequestTimeout (408). ``complete`` tells whether the body was read to its end."""

    def __init__(self, receive: Receive, headers: Headers, timeout_s: float, min_rate: int) -> None:
        self._receive = receive
        self._timeout_s = timeout_s
        self._min_rate = min_rate
        self._started = time.monotonic()
        self._received = 0
        self.complete = headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers

    async def __call__(self) -> Message:
        if self.complete:  # past the body, receive only waits for a disconnect: no deadline
            return await self._receive()
        deadline = self._started + self._timeout_s + self._received / self._min_rate
        try:
            message = await asyncio.wait_for(self._receive(), max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            raise RequestTimeout(
                f"request body not received in time: {self._received} bytes in {self._timeout_s:g} s plus one "
                f"second per {self._min_rate} bytes (KASHF_BODY_TIMEOUT_S, KASHF_BODY_MIN_RATE)"
            ) from None
        self._received += len(message.get("body", b""))
        self.complete = message["type"] != "http.request" or not message.get("more_body", False)
        return message


class RequestContextMiddleware:
    """Binds X-Request-Id (or a new id) for logs and the bus, and the client's address for logs (from
    X-Forwarded-For only behind a trusted proxy: ``gateway.server``), returns the id, bounds the time the body
    takes, and records the request. A response sent before the body was read closes the connection after it."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics, body_timeout_s: float, body_min_rate: int) -> None:
        self.app = app
        self.metrics = metrics
        self.body_timeout_s = body_timeout_s
        self.body_min_rate = body_min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get(REQUEST_ID_HEADER)
        # A client's id is kept only when it is harmless in logs and headers.
        cid = bind_correlation_id(given if given and _SAFE_ID.match(given) else None)
        client = scope.get("client")
        structlog.contextvars.bind_contextvars(client=client[0] if client else None)
        body = BodyDeadline(receive, headers, self.body_timeout_s, self.body_min_rate)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
                out = MutableHeaders(scope=message)
                out[REQUEST_ID_HEADER] = cid
                if not body.complete:  # the unread rest could trickle in forever: no keep-alive after this
                    out["Connection"] = "close"
            await send(message)

        try:
            await self.app(scope, body, send_with_id)
        except ClientDisconnect:
            # A normal event (a closed tab, a cancelled upload): one line, no trace, nobody left to answer.
            log.info("client_disconnected", path=scope.get("path"), method=scope.get("method"))
            status = CLIENT_GONE
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
