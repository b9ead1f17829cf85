"""Probes and metrics (no token): /healthz alive, /readyz Postgres and NATS reachable, /metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from gateway.deps import StateDep
from gateway.http_errors import error_response
from gateway.http_metrics import CONTENT_TYPE

_READY_TIMEOUT_S = 2.0


async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def readyz(state: StateDep) -> JSONResponse:
    try:
        async with state.unit_of_work() as uow:
            await asyncio.wait_for(uow.repo.ping(), _READY_TIMEOUT_S)
    except Exception:
        return error_response(503, "unavailable", "database unreachable")
    if not state.bus.nc.is_connected:
        return error_response(503, "unavailable", "message bus unreachable")
    return JSONResponse({"status": "ready"})


async def metrics(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


def router() -> APIRouter:
    r = APIRouter()
    r.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    r.add_api_route("/readyz", readyz, methods=["GET"], include_in_schema=False)
    r.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    return r
