"""Request dependencies: typed state, one session per request (committed before the response), the account."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, cast

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import transactions
from gateway.repository import Repository
from gateway.state import AppState
from shared.errors import Unauthorized
from shared.logging import current_correlation_id


def app_state(request: Request) -> AppState:
    return cast(AppState, request.app.state.kashf)


async def get_state(request: Request) -> AppState:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop per request.
    return app_state(request)


StateDep = Annotated[AppState, Depends(get_state)]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """Commit when the route returns, roll back when it raises; then publish the outbox rows it wrote
    and drop (here and, by broadcast, in other replicas) the cached views of datasets it changed."""
    state = app_state(request)
    async with state.sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await transactions.rollback(session)
            raise
        await transactions.commit(state, session)


# scope="function": the commit happens before the response is sent, so a 200 means durable.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_repository(session: SessionDep) -> Repository:
    return Repository(session)


RepoDep = Annotated[Repository, Depends(get_repository, scope="function")]


async def get_account(request: Request) -> int:
    return account_of(request)


def account_of(request: Request) -> int:
    """Set by ``ApiRoute`` before the body is read."""
    account_id = getattr(request.state, "account_id", None)
    if not isinstance(account_id, int):
        raise Unauthorized("missing Authorization header; send 'Authorization: Token <key>'")
    return account_id


AccountDep = Annotated[int, Depends(get_account)]


async def get_request_id() -> str:
    return current_correlation_id() or ""


RequestIdDep = Annotated[str, Depends(get_request_id)]
