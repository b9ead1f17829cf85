"""One rendering of every error: ``{"error": code, "detail": sentence}``; never a trace or a host name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from gateway.infra.dbfaults import unavailable
from shared.errors import KashfError, RateLimited

log = structlog.get_logger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media",
    422: "invalid",
}


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _field(loc: Sequence[Any]) -> str:
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def validation_detail(errors: Sequence[Any]) -> tuple[str, str]:
    """(code, sentence) naming the first offending field and why."""
    if not errors:
        return "invalid", "request does not match the schema"
    first = errors[0]
    loc = first.get("loc", ())
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "JSON decode error")
        where = f" at position {loc[1]}" if len(loc) > 1 else ""
        return "invalid_json", f"request body is not valid JSON: {reason}{where}"
    if first.get("type") == "missing" and tuple(loc) == ("body",):
        return "invalid", "request body is required"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return "invalid", f"{_field(loc)}: {first.get('msg', 'invalid value')}{more}"


async def _kashf(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, KashfError)
    headers: dict[str, str] = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Token"
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(getattr(exc, "retry_after_s", 1))
    if exc.status >= 500:
        log.warning("request_failed", status=exc.status, code=exc.error_code, detail=exc.detail)
    return error_response(exc.status, exc.error_code, exc.detail, headers)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    code, detail = validation_detail(exc.errors())
    return error_response(422, code, detail)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        detail = "no such endpoint"
    elif exc.status_code == 405:
        allowed = headers.get("Allow", "POST")
        detail = f"method {request.method} not allowed here; use {allowed}"
    else:
        detail = str(exc.detail)
    return error_response(exc.status_code, _HTTP_CODES.get(exc.status_code, "error"), detail, headers)


async def _database(request: Request, exc: Exception) -> JSONResponse:
    if not unavailable(exc):
        raise exc  # a bug (a constraint the code should have kept): the middleware logs it and answers 500
    log.warning("database_unavailable", error=type(exc).__name__, detail=str(exc).split("\n", 1)[0])
    return error_response(503, "unavailable", "database unavailable")


def install(app: FastAPI) -> None:
    app.add_exception_handler(KashfError, _kashf)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    for exc_type in (DBAPIError, PoolTimeout, ConnectionError, TimeoutError):
        app.add_exception_handler(exc_type, _database)
