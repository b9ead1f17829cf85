"""Request dependencies: the shared state, one unit of work per request (committed before the response),
the account and the request id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, cast

from fastapi import Depends, Request

from gateway.state import AppState
from gateway.uow import UnitOfWork
from shared.errors import Unauthorized
from shared.logging import current_correlation_id


def app_state(request: Request) -> AppState:
    return cast(AppState, request.app.state.kashf)


async def get_state(request: Request) -> AppState:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop per request.
    return app_state(request)


StateDep = Annotated[AppState, Depends(get_state)]


async def get_unit_of_work(state: StateDep) -> AsyncIterator[UnitOfWork]:
    """Commit when the route returns (then publish and invalidate); roll back when it raises."""
    async with state.unit_of_work() as uow:
        yield uow
        await uow.commit()


# scope="function": the commit happens before the response is sent, so a 200 means durable.
UowDep = Annotated[UnitOfWork, Depends(get_unit_of_work, scope="function")]


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
