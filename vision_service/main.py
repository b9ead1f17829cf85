"""Process entry: settings, model load and warm-up, then serve (``python -m vision_service``)."""

from __future__ import annotations

import asyncio
import functools

from PIL import Image

from modelkit.export import serve_export
from modelkit.fetch import Fetcher, FetchPolicy, policy_from_settings
from modelkit.heads import HeadCache
from modelkit.onnx.image import ImageEncoder
from modelkit.onnx.layout import load_model, model_layout
from modelkit.onnx.manifest import ImagePreprocessing, load_manifest
from modelkit.runtime import Readiness, run_service
from modelkit.service import Batching
from shared.bus import Bus, ensure_streams
from shared.bus.blobs import BlobStore
from shared.settings import VisionServiceSettings
from shared.subjects import VISION_EXPORT
from vision_service import handlers
from vision_service.model import Encoder
from vision_service.service import VisionService


def fetch_policy(settings: VisionServiceSettings) -> FetchPolicy:
    return policy_from_settings(settings.fetch_allow_hosts, settings.fetch_allow_ports,
                                max_bytes=settings.max_image_bytes)


def _needed_side(pre: object) -> int | None:
    """Shorter side the model's preprocessing reads from: larger JPEGs may be decoded at reduced scale."""
    if not isinstance(pre, ImagePreprocessing):
        return None
    return pre.crop if pre.resize_mode == "squash" else pre.resize_shorter


def _resample(pre: object) -> Image.Resampling:
    if isinstance(pre, ImagePreprocessing) and pre.interpolation == "bicubic":
        return Image.Resampling.BICUBIC
    return Image.Resampling.BILINEAR


async def setup(settings: VisionServiceSettings, bus: Bus, encoder: Encoder | None = None) -> Readiness:
    """Load and warm the model, then subscribe: no request reaches a cold model."""
    manifest = await asyncio.to_thread(load_manifest, settings.image_model_dir)
    # One model call at a time unless configured: decode threads already share the cores (layout.py).
    layout = model_layout(settings.device, settings.model_workers, settings.threads, max_auto_workers=1)
    if encoder is None:
        encoder = await asyncio.to_thread(load_model, ImageEncoder, settings.image_model_dir, settings.device, layout)
    pre = manifest.preprocessing
    # heads and uploads buckets must exist before the first request
    await ensure_streams(bus.js, replicas=settings.jetstream_replicas)
    fetcher = Fetcher(fetch_policy(settings))
    uploads = BlobStore(bus.js, media="image", size_setting="KASHF_MAX_IMAGE_BYTES")
    service = VisionService(
        encoder, HeadCache(bus.js, settings.head_cache_entries), fetcher, uploads,
        max_image_bytes=settings.max_image_bytes, max_image_pixels=settings.max_image_pixels,
        min_side=_needed_side(pre), copy_resample=_resample(pre),
        decode_workers=settings.decode_workers, batching=Batching.of(settings, layout.workers),
    )
    service.start()
    await handlers.serve(bus, service, concurrency=settings.concurrency)
    await serve_export(bus, VISION_EXPORT, service, settings.image_model_dir)  # export_dataset
    readiness = Readiness()
    readiness.add_check("model", lambda: service.ready)
    readiness.on_shutdown(service.stop)
    readiness.on_shutdown(fetcher.aclose)
    return readiness


def main() -> int:
    settings = VisionServiceSettings()
    return run_service("vision_service", settings, functools.partial(setup, settings))
