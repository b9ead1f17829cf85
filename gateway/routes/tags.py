"""Tags: create_tag, update_tag, delete_tag."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.deps import AccountDep, RepoDep
from gateway.routes.common import api_router, post
from gateway.schemas import CreateTagBody, DeleteTagBody, DeleteTagOut, TagOutFull, UpdateTagBody
from gateway.service import tags


def router() -> APIRouter:
    r = api_router()

    @post(r, "/api/create_tag", TagOutFull, "Create a tag (and its dataset when missing)")
    async def create_tag(body: CreateTagBody, repo: RepoDep, account: AccountDep) -> dict[str, Any]:
        return await tags.create_tag(repo, account, body)

    @post(r, "/api/update_tag", TagOutFull, "Rename a tag or (de)activate it")
    async def update_tag(body: UpdateTagBody, repo: RepoDep, account: AccountDep) -> dict[str, Any]:
        return await tags.update_tag(repo, account, body)

    @post(r, "/api/delete_tag", DeleteTagOut, "Delete a tag with its reports")
    async def delete_tag(body: DeleteTagBody, repo: RepoDep, account: AccountDep) -> dict[str, Any]:
        return await tags.delete_tag(repo, account, body.tag_id)

    return r
