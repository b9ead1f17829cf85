"""Tags: create_tag, update_tag, delete_tag."""

from __future__ import annotations

from fastapi import APIRouter, Response

from gateway.deps import AccountDep, StateDep
from gateway.routes.common import api_router, post, render
from gateway.schemas import CreateTagBody, DeleteTagBody, DeleteTagOut, TagOutFull, UpdateTagBody
from gateway.service import tags


async def create_tag(body: CreateTagBody, state: StateDep, account: AccountDep) -> Response:
    return render(await state.transact(lambda uow: tags.create_tag(uow, account, body)))


async def update_tag(body: UpdateTagBody, state: StateDep, account: AccountDep) -> Response:
    return render(await state.transact(lambda uow: tags.update_tag(uow, account, body)))


async def delete_tag(body: DeleteTagBody, state: StateDep, account: AccountDep) -> Response:
    return render(await state.transact(lambda uow: tags.delete_tag(uow, account, body.tag_id)))


def router() -> APIRouter:
    r = api_router()
    post(r, "/api/create_tag", create_tag, TagOutFull, "Create a tag (and its dataset when missing)")
    post(r, "/api/update_tag", update_tag, TagOutFull, "Rename a tag, (de)activate it or override its threshold")
    post(r, "/api/delete_tag", delete_tag, DeleteTagOut, "Delete a tag with its reports")
    return r
