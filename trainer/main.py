"""Process entry: settings, database, the durable events consumer (``python -m trainer``)."""

from __future__ import annotations

import asyncio
import functools

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from modelkit.runtime import Readiness, run_service
from shared.bus import Bus, ensure_streams
from shared.db.engine import make_engine, make_sessionmaker
from shared.settings import TrainerSettings
from trainer.consumers import TrainerConsumer
from trainer.embedder import BusEmbedder
from trainer.fitting import FitConfig
from trainer.heads import ObjectStoreHeads
from trainer.service import Trainer
from trainer.suggestions import SuggestConfig
from trainer.sweeper import StallSweeper
from trainer.webhooks import WebhookWorker


async def database_reachable(engine: AsyncEngine, timeout_s: float = 2.0) -> bool:
    async def ping() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(ping(), timeout_s)
    except Exception:
        return False
    return True


def fit_config(settings: TrainerSettings) -> FitConfig:
    """The fit's knobs that the environment sets (KASHF_CV_FOLDS, KASHF_SELF_TRAINING)."""
    return FitConfig(cv_folds=settings.cv_folds, self_training=settings.self_training)


async def setup(settings: TrainerSettings, bus: Bus) -> Readiness:
    """Declare the stream, then start pulling: a refit runs only once both the bus and Postgres answer."""
    await ensure_streams(bus.js, replicas=settings.jetstream_replicas)
    engine = make_engine(settings.database_url, pool_size=4)
    sessions = make_sessionmaker(engine)
    trainer = Trainer(sessions, BusEmbedder(bus), ObjectStoreHeads(bus.js, settings.head_versions_kept),
                      config=fit_config(settings),
                      suggest=SuggestConfig(max_cosine=settings.suggest_max_cosine, limit=settings.suggest_limit,
                                            suspect_min=settings.suggest_suspect_min,
                                            embed_per_refit=settings.suggest_embed_per_refit),
                      promotion_tolerance=settings.promotion_tolerance)
    # Deliveries hold a connection while they are sent: a pool of their own, so refits never wait for one.
    webhook_engine = make_engine(settings.database_url, pool_size=settings.webhook_concurrency)
    webhooks = WebhookWorker.from_settings(settings, bus, make_sessionmaker(webhook_engine))
    await webhooks.start()
    consumer = TrainerConsumer(
        bus, trainer, debounce_s=settings.debounce_s, max_deliver=settings.max_deliver,
        ack_wait_s=settings.ack_wait_s,
    )
    await consumer.start()
    sweeper = StallSweeper(bus, sessions, durable=consumer.durable, stall_s=settings.stall_s)
    sweeper.start()
    readiness = Readiness()
    readiness.add_check("postgres", functools.partial(database_reachable, engine))
    readiness.add_check("consumer", lambda: consumer.running)
    readiness.add_check("webhooks", lambda: webhooks.running)
    # Before the bus drains: a running refit can still ack, held messages go back at once.
    readiness.before_drain(sweeper.stop)
    readiness.before_drain(functools.partial(consumer.stop, settings.drain_timeout_s))
    readiness.before_drain(functools.partial(webhooks.stop, settings.drain_timeout_s))
    readiness.on_shutdown(engine.dispose)
    readiness.on_shutdown(webhook_engine.dispose)
    return readiness


def main() -> int:
    settings = TrainerSettings()
    return run_service("trainer", settings, functools.partial(setup, settings))
