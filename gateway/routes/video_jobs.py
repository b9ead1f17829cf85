"""POST /api/video_job/: state and result of an asynchronous tag_video_frames job."""

from __future__ import annotations

from fastapi import APIRouter, Response

from gateway.deps import AccountDep, StateDep
from gateway.routes.common import api_router, post, render
from gateway.schemas import VideoJobBody, VideoJobOut
from gateway.service.video_jobs import read_video_job


async def video_job(body: VideoJobBody, account: AccountDep, state: StateDep) -> Response:
    return render(await read_video_job(state.bus, account, body.job_id))


def router() -> APIRouter:
    r = api_router()
    post(r, "/api/video_job", video_job, VideoJobOut, "State and result of an asynchronous tag_video_frames job")
    return r
