"""Video service logic: obtain the video as a temp file, sample frames in a thread, embed, tag, keep changes.

Per video, one thread decodes and preprocesses frames (``sampling.sample_frames`` and the encoder's
``preprocess``) and hands chunks through a small bounded queue to the event loop, which submits them
to the shared dynamic batcher: decoding the next chunk overlaps the model call on this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import tempfile
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import structlog

from modelkit.fetch import Fetcher
from modelkit.heads import Head, tag_vectors
from modelkit.service import DEFAULT_BATCHING, BatchedModelService, Batching, HeadSource
from shared.errors import BadRequest, TooLarge, Unavailable
from shared.schemas.inference import ScoredTag, TagRef
from shared.schemas.media import MediaInput, TagVideoReply, TagVideoRequest, VideoFrame
from video_service.model import Encoder
from video_service.sampling import (
    SampledFrame,
    VideoInfo,
    VideoLimits,
    changed_frames,
    format_time,
    probe,
    sample_frames,
)

log = structlog.get_logger(__name__)

# Chunks of preprocessed frames waiting for the model, per video: bounds memory (16 x 600 KB each).
_QUEUED_CHUNKS = 2


class BlobSource(Protocol):
    """Uploads by key (the BLOBS_BUCKET object store); raises KashfError when missing or too big."""

    async def stream_to_file(self, key: str, dest: Path, max_bytes: int) -> int: ...


@dataclass(frozen=True)
class _Chunk:
    indices: list[int]
    times: list[float]
    pixels: list[np.ndarray]


class _End:
    """Sentinel: the producer thread has finished (after its last chunk or its error)."""


_END = _End()
_Item = _Chunk | BaseException | _End


class VideoService(BatchedModelService[np.ndarray]):
    """Samples and tags videos; owns no transport (fetcher, blob store and heads are handed in)."""

    def __init__(
        self,
        encoder: Encoder,
        heads: HeadSource,
        fetcher: Fetcher,
        blobs: BlobSource,
        *,
        limits: VideoLimits,
        max_video_bytes: int,
        sync_video_seconds: float,
        active_videos: int = 2,
        frame_batch: int = 16,
        tmp_dir: Path | None = None,
        batching: Batching = DEFAULT_BATCHING,
    ) -> None:
        super().__init__(encoder, heads, self._encode_batch, name="video", batching=batching,
                         pool_workers=active_videos)
        self.encoder: Encoder = encoder
        self.fetcher = fetcher
        self.blobs = blobs
        self.limits = limits
        self.max_video_bytes = max_video_bytes
        self.sync_video_seconds = sync_video_seconds
        self.frame_batch = frame_batch
        self.tmp_dir = tmp_dir
        # Bounds downloads on disk and decoder threads; further requests wait their turn.
        self._slots = asyncio.Semaphore(active_videos)

    # ------------------------------------------------------------------ requests

    async def tag_video(self, request: TagVideoRequest) -> TagVideoReply:
        """The synchronous form: a video longer than ``sync_video_seconds`` (after ``duration``) is a 400."""
        return await self.run(request, sync=True)

    async def run(self, request: TagVideoRequest, *, sync: bool) -> TagVideoReply:
        """Frames whose tag set changed, in stream order; media problems raise their KashfError."""
        request.check()  # before any download
        head = await self.head_for(request.head)
        async with self._slots:
            path = await self._obtain(request.video)
            try:
                end_s = await self._end_seconds(path, request, sync)
                return await self._tag_file(path, request, head, end_s)
            finally:
                await asyncio.to_thread(path.unlink, missing_ok=True)

    async def _obtain(self, video: MediaInput) -> Path:
        """The video's bytes in a new temp file (removed again if obtaining fails)."""
        if (video.url is None) + (video.blob_key is None) + (video.data is None) != 2:
            raise BadRequest("a video needs exactly one of url, blob_key and data", code="invalid")
        fd, name = await asyncio.to_thread(tempfile.mkstemp, prefix="kashf-video-", dir=self.tmp_dir)
        await asyncio.to_thread(os.close, fd)
        path = Path(name)
        try:
            if video.url is not None:
                await self.fetcher.stream_to_file(
                    video.url, path, accept=("video/",), max_bytes=self.max_video_bytes
                )
            elif video.blob_key is not None:
                await self.blobs.stream_to_file(video.blob_key, path, self.max_video_bytes)
            else:
                data = video.data or b""
                if len(data) > self.max_video_bytes:
                    raise TooLarge(f"video over {self.max_video_bytes} bytes (KASHF_MAX_VIDEO_BYTES)")
                await asyncio.to_thread(path.write_bytes, data)
        except BaseException:
            await asyncio.to_thread(path.unlink, missing_ok=True)
            raise
        return path

    async def _end_seconds(self, path: Path, request: TagVideoRequest, sync: bool) -> float:
        """Seconds of video to analyse; in the synchronous form, refuse more than the sync limit."""
        info: VideoInfo = await asyncio.to_thread(probe, path)
        bounds = [self.limits.max_duration_s]
        if request.duration_s:
            bounds.append(request.duration_s)
        if info.duration_s is not None and info.duration_s > 0:
            bounds.append(info.duration_s)
        end = min(bounds)
        if not sync:
            return end
        # A second of grace: containers round durations (a "120 s" clip may say 120.04 s).
        if end > self.sync_video_seconds + 1.0:
            raise BadRequest(
                f"this request analyses {math.ceil(end)} s of video; synchronous requests analyse at most "
                f"{self.sync_video_seconds:g} s (KASHF_SYNC_VIDEO_SECONDS): send \"async\": true and poll "
                f"/api/video_job/, or set a shorter duration",
                code="video_too_long_for_sync",
            )
        # A container that does not state its duration is analysed up to the sync limit only.
        return min(end, self.sync_video_seconds + 1.0)

    async def _tag_file(
        self, path: Path, request: TagVideoRequest, head: Head | None, end_s: float
    ) -> TagVideoReply:
        loop = asyncio.get_running_loop()
        if self._pool is None:
            raise Unavailable("video service is not running")
        queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=_QUEUED_CHUNKS)
        stop = threading.Event()
        producer = loop.run_in_executor(
            self._pool, self._produce, path, request, end_s, queue, loop, stop
        )
        analysed: list[tuple[tuple[int, float], list[ScoredTag]]] = []
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    finished = True
                    break
                if isinstance(item, BaseException):
                    raise item
                vectors = np.stack(await self.batcher.submit(item.pixels))
                tags = tag_vectors(head, vectors, request.tags, top_k=request.top_k,
                                   min_probability=request.min_probability)
                analysed.extend(zip(zip(item.indices, item.times, strict=True), tags, strict=True))
        finally:
            if not finished:
                await self._drain(queue, stop)
            await producer
        return self._reply(analysed, request.tags)

    @staticmethod
    async def _drain(queue: asyncio.Queue[_Item], stop: threading.Event) -> None:
        """Stop the producer and take what it still hands over, so its blocked put returns."""
        stop.set()
        while not isinstance(await queue.get(), _End):
            pass

    def _reply(
        self, analysed: Sequence[tuple[tuple[int, float], list[ScoredTag]]], active: Sequence[TagRef]
    ) -> TagVideoReply:
        by_frame = dict(analysed)
        kept = changed_frames((key, [t.id for t in tags]) for key, tags in analysed)
        frames = [
            VideoFrame(frame=index, time=format_time(time_s), tags=by_frame[(index, time_s)])
            for (index, time_s), _ in kept
        ]
        return TagVideoReply(model_id=self.model_id, frames=frames, analysed_frames=len(analysed))

    # ------------------------------------------------------------------ threads

    def _produce(
        self,
        path: Path,
        request: TagVideoRequest,
        end_s: float,
        queue: asyncio.Queue[_Item],
        loop: asyncio.AbstractEventLoop,
        stop: threading.Event,
    ) -> None:
        """Runs in a video thread: decode, sample, preprocess; chunks go to the loop through ``queue``."""

        def put(item: _Item) -> None:
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

        try:
            frames = sample_frames(
                path, every_ms=request.every_ms, duration_s=end_s,
                min_frame_diff=request.min_frame_diff, limits=self.limits,
            )
            # Closing the generator on an early stop closes the container at once.
            with contextlib.closing(cast(Generator[SampledFrame, None, None], frames)):
                chunk = _Chunk([], [], [])
                for frame in frames:
                    if stop.is_set():
                        return
                    chunk.indices.append(frame.index)
                    chunk.times.append(frame.time_s)
                    chunk.pixels.append(np.asarray(self.encoder.preprocess(frame.image), dtype=np.float32))
                    if len(chunk.pixels) >= self.frame_batch:
                        put(chunk)
                        chunk = _Chunk([], [], [])
                if chunk.pixels and not stop.is_set():
                    put(chunk)
        except Exception as exc:
            put(exc)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                put(_END)

    def _encode_batch(self, batch: list[np.ndarray]) -> Sequence[np.ndarray]:
        return list(self.encoder.encode_batch(np.stack(batch)))
