"""Process entry: settings, model load and warm-up, then serve (``python -m text_service``)."""

from __future__ import annotations

import asyncio
import functools

from modelkit.export import serve_export
from modelkit.heads import HeadCache
from modelkit.onnx.layout import load_model, model_layout
from modelkit.onnx.text import TextEncoder
from modelkit.runtime import Readiness, run_service
from modelkit.service import Batching
from shared.bus import Bus, ensure_streams
from shared.settings import TextServiceSettings
from shared.subjects import TEXT_EXPORT
from text_service import handlers
from text_service.model import Encoder
from text_service.service import TextService


async def setup(settings: TextServiceSettings, bus: Bus, encoder: Encoder | None = None) -> Readiness:
    """Load and warm the model, then subscribe: no request reaches a cold model."""
    layout = model_layout(settings.device, settings.model_workers, settings.threads)
    if encoder is None:
        encoder = await asyncio.to_thread(load_model, TextEncoder, settings.text_model_dir, settings.device, layout)
    # the heads bucket must exist before the first tag request
    await ensure_streams(bus.js, replicas=settings.jetstream_replicas)
    heads = HeadCache(bus.js, settings.head_cache_entries)
    service = TextService(encoder, heads, batching=Batching.of(settings, layout.workers))
    service.start()
    await handlers.serve(bus, service, concurrency=settings.concurrency)
    await serve_export(bus, TEXT_EXPORT, service, settings.text_model_dir)  # export_dataset
    readiness = Readiness()
    readiness.add_check("model", lambda: service.ready)
    readiness.on_shutdown(service.stop)
    return readiness


def main() -> int:
    settings = TextServiceSettings()
    return run_service("text_service", settings, functools.partial(setup, settings))
