"""Head versions: list_versions, use_version."""

from __future__ import annotations

from fastapi import APIRouter, Response

from gateway.deps import AccountDep, StateDep
from gateway.routes.common import api_router, post, render
from gateway.schemas import DatasetInfoOut, ListVersionsBody, UseVersionBody, VersionOut
from gateway.service import versions


async def list_versions(body: ListVersionsBody, state: StateDep, account: AccountDep) -> Response:
    return render(await state.transact(lambda uow: versions.list_versions(uow, account, body.dataset)))


async def use_version(body: UseVersionBody, state: StateDep, account: AccountDep) -> Response:
    return render(await state.transact(lambda uow: versions.use_version(uow, account, body, state.predictions)))


def router() -> APIRouter:
    r = api_router()
    post(r, "/api/list_versions", list_versions, list[VersionOut],
         "The dataset's head versions, newest first: live, kept (older) or held (lost the promotion gate)")
    post(r, "/api/use_version", use_version, DatasetInfoOut,
         "Make a stored head version live (rollback, or promote a held fit); answers dataset_info")
    return r
