"""POST /api/video_job/: state and result of an asynchronous tag_video_frames job."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from gateway.deps import AccountDep, StateDep
from gateway.routes.common import api_router
from gateway.routes.common import post as post_route
from gateway.service.video_jobs import read_video_job


class VideoJobBody(BaseModel):
    model_config = ConfigDict(
        extra="ignore", json_schema_extra={"examples": [{"job_id": "vj0f6c1a9e5b7d4c2e8a3b1f0d9c7e5a42"}]}
    )

    job_id: str = Field(min_length=1, max_length=100)


class VideoJobOut(BaseModel):
    """``result`` has the synchronous tag_video_frames answer's shape once ``state`` is done."""

    job_id: str
    state: str
    result: list[dict[str, Any]] | None = None
    error: dict[str, str] | None = None


def router() -> APIRouter:
    r = api_router()

    @post_route(r, "/api/video_job", VideoJobOut, "State and result of an asynchronous tag_video_frames job")
    async def video_job(body: VideoJobBody, account: AccountDep, state: StateDep) -> dict[str, Any]:
        return await read_video_job(state.bus, account, body.job_id)

    return r
