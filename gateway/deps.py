"""Request dependencies: typed state, one session per request (committed before the response), the account."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, cast

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import outbox
from gateway.repository import Repository
from gateway.state import AppState
from shared.errors import Unauthorized
from shared.logging import current_correlation_id


def get_state(request: Request) -> AppState:
    return cast(AppState, request.app.state.kashf)


StateDep = Annotated[AppState, Depends(get_state)]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """Commit when the route returns, roll back when it raises; then publish the outbox rows it wrote."""
    state = get_state(request)
    async with state.sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        await session.commit()
        state.outbox.publish_soon(outbox.pending_ids(session))


# scope="function": the commit happens before the response is sent, so a 200 means durable.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_repository(session: SessionDep) -> Repository:
    return Repository(session)


RepoDep = Annotated[Repository, Depends(get_repository, scope="function")]


async def get_account(request: Request) -> int:
    """Set by ``ApiRoute`` before the body is read."""
    account_id = getattr(request.state, "account_id", None)
    if not isinstance(account_id, int):
        raise Unauthorized("missing Authorization header; send 'Authorization: Token <key>'")
    return account_id


AccountDep = Annotated[int, Depends(get_account)]


async def get_request_id() -> str:
    return current_correlation_id() or ""


RequestIdDep = Annotated[str, Depends(get_request_id)]
