"""What the API areas share: POST registration with and without the trailing slash, bodies a route
reads itself, and the rendering of a service's answer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fastapi import APIRouter, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from gateway.routes.guard import ApiRoute

M = TypeVar("M", bound=BaseModel)

_ERRORS_DOC: dict[int | str, dict[str, Any]] = {
    status: {
        "description": text,
        "content": {"application/json": {"example": {"error": code, "detail": "..."}}},
    }
    for status, code, text in (
        (400, "bad_request", "well-formed request that breaks a rule"),
        (401, "unauthorized", "missing or wrong token"),
        (404, "not_found", "dataset or tag unknown to this account"),
        (413, "too_large", "body, list or text over its limit (the setting is named)"),
        (415, "unsupported_media", "unsupported content type"),
        (422, "invalid", "not valid JSON, or not matching the schema (the field is named)"),
        (429, "rate_limited", "over the account's rate, or a model service's queue is full"),
        (503, "unavailable", "a backing service is unavailable"),
        (504, "timeout", "a model service did not answer in time"),
    )
}


def api_router() -> APIRouter:
    return APIRouter(route_class=ApiRoute)


def post(router: APIRouter, path: str, endpoint: Callable[..., Any], doc: Any, summary: str, **extra: Any) -> None:
    """Register ``endpoint`` at ``path/`` (documented, answering ``doc``) and ``path`` (hidden from the docs)."""
    common: dict[str, Any] = {"methods": ["POST"], "response_model": None, **extra}
    router.add_api_route(
        path + "/", endpoint, summary=summary, responses={200: {"model": doc}, **_ERRORS_DOC}, **common
    )
    router.add_api_route(path, endpoint, include_in_schema=False, **common)


def render(answer: BaseModel | Sequence[BaseModel]) -> Response:
    """The service's answer as JSON, serialised by pydantic itself (FastAPI's generic encoder first walks
    every value in Python: a cost the tag routes do not pay)."""
    if isinstance(answer, BaseModel):
        body = answer.__pydantic_serializer__.to_json(answer)
    else:
        body = b"[" + b",".join(a.__pydantic_serializer__.to_json(a) for a in answer) + b"]"
    return Response(body, media_type="application/json")


def parse_body(model: type[M], raw: bytes | dict[str, Any], *, strict: bool | None = None) -> M:
    """Validate a body the route reads itself, failing the way FastAPI's own parsing does (422);
    ``strict=False`` relaxes the fields that are strict in JSON (form values are all strings)."""
    if raw == b"":
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    try:
        if isinstance(raw, bytes):
            return model.model_validate_json(raw)
        return model.model_validate(raw, strict=strict)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc
