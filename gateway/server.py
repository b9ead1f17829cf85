"""The gateway's uvicorn configuration, with a deadline on request headers: uvicorn has none (its keep-alive
timer stops at the first byte), so a client sending headers a byte at a time held a connection forever. The
deadline on the body is the middleware's (``gateway.middleware``), which can still answer 408 in JSON.

Proxy headers are believed only from ``KASHF_TRUSTED_PROXIES`` (none by default): uvicorn's own default trusts
loopback, and reads FORWARDED_ALLOW_IPS behind the settings' back."""

from __future__ import annotations

import asyncio
import json

import structlog
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.settings import GatewaySettings

log = structlog.get_logger(__name__)


def _timeout_response(header_timeout_s: float) -> bytes:
    detail = f"request headers not received within {header_timeout_s:g} s (KASHF_HEADER_TIMEOUT_S)"
    body = json.dumps({"error": "request_timeout", "detail": detail}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def http_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, closing a connection whose request headers take over ``header_timeout_s``
    (from the connection's start, or from the first byte of each later request on it)."""
    response = _timeout_response(header_timeout_s)

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:  # a later request on a kept-alive connection
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                log.info("request_headers_timeout", client=self.client[0] if self.client else None)
                self.transport.write(response)
                self.transport.close()

    return HeaderDeadlineProtocol


def server_config(app: FastAPI, settings: GatewaySettings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=http_protocol(settings.header_timeout_s),
        lifespan="on",
        # uvicorn handles SIGTERM: stop accepting, finish in-flight requests, then run the lifespan's exit.
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        log_config=None,
        access_log=False,
        server_header=False,
        # The client's address (the per-address limit before authentication, logs) comes from
        # X-Forwarded-For only when the connection is from a trusted proxy.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies.split(",") if settings.trusted_proxies else [],
    )
