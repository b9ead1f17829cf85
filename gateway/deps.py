"""Request dependencies: the shared state, the account and the request id. A route's unit of work is
``state.transact(work)``: committed before the response, run again once when its connection is lost."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from gateway.state import AppState
from shared.errors import Unauthorized
from shared.logging import current_correlation_id


def app_state(request: Request) -> AppState:
    return cast(AppState, request.app.state.kashf)


async def get_state(request: Request) -> AppState:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop per request.
    return app_state(request)


StateDep = Annotated[AppState, Depends(get_state)]


async def get_account(request: Request) -> int:
    """The account ``ApiRoute`` authenticated (through the token cache) before the body was read."""
    account_id = getattr(request.state, "account_id", None)
    if not isinstance(account_id, int):
        raise Unauthorized("missing Authorization header; send 'Authorization: Token <key>'")
    return account_id


AccountDep = Annotated[int, Depends(get_account)]


async def get_request_id() -> str:
    return current_correlation_id() or ""


RequestIdDep = Annotated[str, Depends(get_request_id)]
