"""``create_app(settings)``: the FastAPI application and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from gateway import http_errors
from gateway.http_metrics import HttpMetrics
from gateway.infra.datasetcache import DatasetCache
from gateway.infra.outbox import OutboxPublisher
from gateway.infra.predictions import PredictionCounter
from gateway.infra.ratelimit import RateLimiter
from gateway.infra.sharedrate import SharedRateLimiter
from gateway.infra.tokens import TokenCache
from gateway.middleware import RequestContextMiddleware
from gateway.routes import console, datasets, health, items, reports, suggest, tagging, tags, video_jobs, webhooks
from gateway.routes import export as export_routes
from gateway.routes import versions as version_routes
from gateway.service.tagging import kept_inputs_settled
from gateway.state import AppState
from shared.bus import Bus, ensure_streams
from shared.bus.streams import declare_key_value, rate_config
from shared.bus.video_jobs import VideoJobStore
from shared.db.engine import make_engine, make_sessionmaker
from shared.schemas.events import DatasetsChanged
from shared.settings import GatewaySettings
from shared.subjects import DATASETS_CHANGED

log = structlog.get_logger(__name__)

DESCRIPTION = (
    "Kashf learns a tag from a few labelled texts, images or videos and finds it in new data. "
    'Every /api call needs `Authorization: Token <key>`; errors are `{"error", "detail"}`.'
)


def create_app(settings: GatewaySettings) -> FastAPI:
    """Build the app; connections are opened by its lifespan, not here."""
    metrics = HttpMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, AppState]]:
        engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
        bus = await Bus.connect(settings.nats_url, "gateway")
        try:
            await ensure_streams(bus.js, replicas=settings.jetstream_replicas)
            await VideoJobStore(bus.js, replicas=settings.jetstream_replicas).ensure()
            rate_kv = await declare_key_value(bus.js, rate_config(), settings.jetstream_replicas)
            sessionmaker = make_sessionmaker(engine)
            publisher = OutboxPublisher(sessionmaker, bus, sweep_s=settings.outbox_sweep_s)
            state = AppState(
                settings=settings,
                engine=engine,
                sessionmaker=sessionmaker,
                bus=bus,
                outbox=publisher,
                limiter=SharedRateLimiter(
                    rate_kv, lambda: bus.nc.is_connected, settings.rate_per_minute, settings.rate_burst,
                    local=RateLimiter(settings.rate_per_minute, settings.rate_burst),
                ),
                addresses=RateLimiter(
                    settings.rate_per_ip_per_minute,
                    settings.rate_per_ip_burst,
                    what="this address's rate of token lookups",
                    settings="KASHF_RATE_PER_IP_PER_MINUTE, burst KASHF_RATE_PER_IP_BURST",
                ),
                predictions=PredictionCounter(sessionmaker),
                tokens=TokenCache(settings.token_cache_s, settings.token_unknown_cache_s),
                datasets=DatasetCache(settings.dataset_cache_s),
                metrics=metrics,
            )
            await bus.listen(DATASETS_CHANGED, DatasetsChanged, state.datasets.on_broadcast)
            app.state.kashf = state
            publisher.start()
            state.predictions.start()
            log.info("gateway_started")
            try:
                yield {"kashf": state}
            finally:
                # keep_inputs writes started by answered tag calls finish before the pool closes (bounded).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(kept_inputs_settled(), settings.drain_timeout_s)
                await state.predictions.stop()
                await publisher.stop()
        finally:
            await bus.close(settings.drain_timeout_s)
            await engine.dispose()
            log.info("gateway_stopped")

    app = FastAPI(
        title="Kashf",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        redirect_slashes=False,  # both spellings are routes; anything else is a plain 404
        docs_url="/docs",
        redoc_url=None,
    )
    http_errors.install(app)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        body_timeout_s=settings.body_timeout_s,
        body_min_rate=settings.body_min_rate,
    )
    for area in (tagging, reports, items, tags, datasets, suggest, video_jobs, webhooks, health, console):
        app.include_router(area.router())
    app.include_router(export_routes.router())  # export_dataset
    app.include_router(version_routes.router())  # list_versions, use_version
    return app
