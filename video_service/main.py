"""Process entry: settings, model load and warm-up, then serve (``python -m video_service``)."""

from __future__ import annotations

import asyncio
import functools

from modelkit.fetch import Fetcher, FetchPolicy, policy_from_settings
from modelkit.heads import HeadCache
from modelkit.onnx.image import ImageEncoder
from modelkit.onnx.layout import load_model, model_layout
from modelkit.runtime import Readiness, run_service
from modelkit.service import Batching
from shared.bus import Bus, ensure_streams
from shared.bus.blobs import BlobStore
from shared.bus.video_jobs import VideoJobStore
from shared.settings import VideoServiceSettings
from video_service import handlers
from video_service.jobs import VideoJobRunner
from video_service.model import Encoder
from video_service.sampling import VideoLimits
from video_service.service import VideoService

# A whole video in one download: longer than an image fetch's budget.
VIDEO_FETCH_TIMEOUT_S = 120.0


def fetch_policy(settings: VideoServiceSettings) -> FetchPolicy:
    return policy_from_settings(
        settings.fetch_allow_hosts,
        settings.fetch_allow_ports,
        max_bytes=settings.max_video_bytes,
        read_timeout=15.0,
        total_timeout=VIDEO_FETCH_TIMEOUT_S,
    )


def video_limits(settings: VideoServiceSettings) -> VideoLimits:
    return VideoLimits(max_duration_s=settings.max_video_seconds, max_frames=settings.max_video_frames)


async def setup(settings: VideoServiceSettings, bus: Bus, encoder: Encoder | None = None) -> Readiness:
    """Load and warm the model, then subscribe and start the job consumer: no work reaches a cold model."""
    # One model call at a time unless configured: decode threads already share the cores (layout.py).
    layout = model_layout(settings.device, settings.model_workers, settings.threads, max_auto_workers=1)
    if encoder is None:
        encoder = await asyncio.to_thread(
            load_model, ImageEncoder, settings.image_model_dir, settings.device, layout
        )
    # heads and uploads buckets must exist before the first request
    await ensure_streams(bus.js, replicas=settings.jetstream_replicas)
    fetcher = Fetcher(fetch_policy(settings))
    blobs = BlobStore(bus.js, media="video", size_setting="KASHF_MAX_VIDEO_BYTES")
    service = VideoService(
        encoder, HeadCache(bus.js, settings.head_cache_entries), fetcher, blobs,
        limits=video_limits(settings), max_video_bytes=settings.max_video_bytes,
        sync_video_seconds=settings.sync_video_seconds, active_videos=settings.active_videos,
        frame_batch=settings.frame_batch, tmp_dir=settings.tmp_dir, batching=Batching.of(settings, layout.workers),
    )
    service.start()
    await handlers.serve(bus, service, concurrency=settings.concurrency)
    jobs = VideoJobRunner(
        bus.nc, service, blobs, VideoJobStore(bus.js, replicas=settings.jetstream_replicas),
        workers=settings.job_workers,
        ack_wait_s=settings.job_ack_wait_s, max_deliver=settings.job_max_deliver,
    )
    await jobs.start()
    readiness = Readiness()
    readiness.add_check("model", lambda: service.ready)
    readiness.add_check("jobs", lambda: jobs.running)
    # Before the bus drains: a running job can still write its result and ack.
    readiness.before_drain(functools.partial(jobs.stop, settings.drain_timeout_s / 2))
    readiness.on_shutdown(service.stop)
    readiness.on_shutdown(fetcher.aclose)
    return readiness


def main() -> int:
    settings = VideoServiceSettings()
    return run_service("video_service", settings, functools.partial(setup, settings))
