"""Probes and metrics (no token): /healthz alive, /readyz Postgres and NATS reachable, /metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from gateway.deps import StateDep
from gateway.handlers import error_response
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.repository import Repository

_READY_TIMEOUT_S = 2.0


def router(metrics: Metrics) -> APIRouter:
    r = APIRouter()

    @r.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @r.get("/readyz", include_in_schema=False)
    async def readyz(request: Request, state: StateDep) -> JSONResponse:
        try:
            async with state.sessionmaker() as session:
                await asyncio.wait_for(Repository(session).ping(), _READY_TIMEOUT_S)
        except Exception:
            return error_response(503, "unavailable", "database unreachable")
        if not state.bus.nc.is_connected:
            return error_response(503, "unavailable", "message bus unreachable")
        return JSONResponse({"status": "ready"})

    @r.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return r
