"""Stream-decode a video file and pick the frames to analyse (pure logic: no NATS, no model).

Frame times come from ``pts * time_base`` minus the stream's start time, never from index/fps, so
variable frame rate works. ``frame`` indices count decoded frames in presentation (output) order,
the same numbers a plain ``for f in container.decode(video=0)`` enumerates.

Decisions:
- A decode or demux error after the header ends the iteration quietly (a truncated upload yields
  the frames before the cut); an unreadable header is ``UnsupportedMedia``.
- Argument errors raise when ``sample_frames`` is called; media errors on the first ``next()``.
- Only whole quarter turns of the display matrix are applied; flips and non-square pixels are not.
- Only local files and a list of real container formats are opened, so a playlist (HLS, concat)
  cannot make FFmpeg read other files or URLs.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

import av
import av.error
import numpy as np
import structlog
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.stream import VideoStream
from PIL import Image

from shared.errors import TooLarge, UnsupportedMedia

log = structlog.get_logger(__name__)

# Demuxers FFmpeg may pick; audio-only formats are listed so such a file gets "no video stream".
_FORMATS = ",".join((
    "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "flv", "mpegts", "mpeg",
    "mpegvideo", "m4v", "h264", "hevc", "gif", "ogg", "asf", "mp3", "wav", "aac", "flac",
))
_OPEN_OPTIONS = {"format_whitelist": _FORMATS, "protocol_whitelist": "file"}
# Auto mode seeks only in formats whose header indexes every frame, where a seek lands exactly.
_INDEXED_FORMATS = {"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"}
# Seek only when it skips at least this many frames: a seek flushes the decoder's thread pipeline.
_MIN_FRAMES_SKIPPED_BY_SEEK = 16

T = TypeVar("T")


@dataclass(frozen=True)
class VideoLimits:
    """Server-side bounds on one video's work."""

    max_duration_s: float = 600
    max_frames: int = 2000
    max_pixels: int = 3840 * 2160
    diff_size: int = 32


@dataclass(frozen=True)
class SampledFrame:
    """One frame chosen for analysis: decoded-stream index, seconds from stream start, upright RGB image."""

    index: int
    time_s: float
    image: Image.Image


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream (``width``/``height`` as stored)."""

    duration_s: float | None
    fps: float | None
    width: int
    height: int
    rotation: int
    frame_count: int | None
    codec: str
    container: str


def format_time(seconds: float) -> str:
    """``H:MM:SS`` of the whole seconds in ``seconds`` (floor; negatives count as 0)."""
    whole = max(0, math.floor(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def changed_frames(frames_with_tags: Iterable[tuple[T, list[int]]]) -> Iterator[tuple[T, list[int]]]:
    """Keep a frame only when its tag-id set differs from the previously kept frame's (first always kept)."""
    previous: frozenset[int] | None = None
    for frame, tags in frames_with_tags:
        current = frozenset(tags)
        if current != previous:
            previous = current
            yield frame, tags


def probe(path: Path) -> VideoInfo:
    """Read the header and first frame; raise ``UnsupportedMedia`` for anything that is not a video."""
    with _open(path) as container:
        stream = _video_stream(container)
        rotation = 0
        for frame in _decode_quietly(container.decode(stream)):
            rotation = _rotation(frame, stream)
            break
        duration: float | None = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            duration_s=duration,
            fps=float(rate) if rate else None,
            width=stream.width,
            height=stream.height,
            rotation=rotation,
            frame_count=stream.frames or None,
            codec=stream.codec_context.name,
            container=container.format.name,
        )


def sample_frames(
    path: Path,
    *,
    every_ms: int,
    duration_s: float | None,
    min_frame_diff: float,
    limits: VideoLimits,
    seek: bool | None = None,
) -> Iterator[SampledFrame]:
    """Yield the first frame at/after each ``k * every_ms``, skipping near-copies of the last one yielded.

    ``duration_s`` None or 0 means up to ``limits.max_duration_s``. ``seek`` None picks the strategy
    from the keyframe spacing; True/False force it (both yield the same frames). Arguments as checked
    by ``shared.schemas.media.check_video_params``.
    """
    end = min(duration_s or limits.max_duration_s, limits.max_duration_s)
    return _sample(path, Fraction(every_ms, 1000), Fraction(end), min_frame_diff, limits, seek)


def _sample(
    path: Path, step: Fraction, end: Fraction, min_diff: float, limits: VideoLimits, seek: bool | None
) -> Iterator[SampledFrame]:
    with _open(path) as container:
        stream = _video_stream(container)
        _check_pixels(stream.width, stream.height, limits)
        stream.thread_type = "AUTO"
        plan = None
        if seek or (seek is None and _may_pay_off(container, stream, step)):
            plan = _plan_seeks(path, step, end)
        if plan is not None and seek is None and not plan.pays_off(step):
            plan = None
        candidates = _seeking(container, stream, plan) if plan else _sequential(container, stream, step, end)
        last_thumb: np.ndarray | None = None
        yielded = 0
        for index, time, frame in candidates:
            _check_pixels(frame.width, frame.height, limits)
            if min_diff > 0:
                thumb = _thumbnail(frame, limits.diff_size)
                if last_thumb is not None and float(np.abs(thumb - last_thumb).mean()) < min_diff:
                    continue
                last_thumb = thumb
            yield SampledFrame(index, float(time), _upright(frame, stream))
            yielded += 1
            if yielded >= limits.max_frames:
                log.info("video_frame_limit_reached", max_frames=limits.max_frames, time_s=float(time))
                return


def _open(path: Path) -> InputContainer:
    try:
        return av.open(str(path), "r", container_options=_OPEN_OPTIONS)
    except FileNotFoundError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise UnsupportedMedia("not a readable video") from exc


def _video_stream(container: InputContainer) -> VideoStream:
    if not container.streams.video:
        raise UnsupportedMedia("no video stream")
    stream = container.streams.video[0]
    if stream.time_base is None or stream.codec_context is None:
        raise UnsupportedMedia("not a readable video: video stream without timing or codec")
    return stream


def _check_pixels(width: int, height: int, limits: VideoLimits) -> None:
    if width * height > limits.max_pixels:
        raise TooLarge(
            f"video resolution {width}x{height} over the {limits.max_pixels}-pixel limit (max_pixels)"
        )


def _decode_quietly(frames: Iterator[VideoFrame]) -> Iterator[VideoFrame]:
    """Pass frames through until the first FFmpeg error, which ends the stream (truncated file)."""
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except av.error.FFmpegError as exc:
            log.warning("video_decode_stopped", error=str(exc))
            return
        yield frame


def _sequential(
    container: InputContainer, stream: VideoStream, step: Fraction, end: Fraction
) -> Iterator[tuple[int, Fraction, VideoFrame]]:
    """Decode every frame; hand out the first one at/after each sampling point."""
    time_base = stream.time_base
    assert time_base is not None
    start = stream.start_time
    next_point = Fraction(0)
    for index, frame in enumerate(_decode_quietly(container.decode(stream))):
        if frame.pts is None:
            continue
        if start is None:
            start = frame.pts
        time = (frame.pts - start) * time_base
        if time >= end:
            return
        if time >= next_point:
            next_point = (time // step + 1) * step
            yield index, time, frame


@dataclass(frozen=True)
class _SeekPlan:
    """Presentation timestamps from one demux pass: all frames (sorted) and keyframes (sorted)."""

    pts: list[int]
    keyframes: list[int]
    wanted: list[int]
    start: int
    time_base: Fraction

    def pays_off(self, step: Fraction) -> bool:
        # Seeking only saves work when keyframes come more often than sampling points.
        if len(self.keyframes) < 2:
            return False
        gop = (self.keyframes[-1] - self.keyframes[0]) * self.time_base / (len(self.keyframes) - 1)
        return gop < step and step / (self.time_base * self._frame_gap()) >= _MIN_FRAMES_SKIPPED_BY_SEEK

    def _frame_gap(self) -> Fraction:
        return Fraction(self.pts[-1] - self.pts[0], max(1, len(self.pts) - 1))


def _may_pay_off(container: InputContainer, stream: VideoStream, step: Fraction) -> bool:
    """Cheap pre-check before the demux pass: an indexed format and enough frames per sampling step."""
    rate = stream.average_rate or stream.guessed_rate
    if container.format.name not in _INDEXED_FORMATS or not rate:
        return False
    return step * rate >= _MIN_FRAMES_SKIPPED_BY_SEEK


def _plan_seeks(path: Path, step: Fraction, end: Fraction) -> _SeekPlan | None:
    """Demux (no decoding) up to ``end``; None when timestamps are missing or the file is broken."""
    pts: list[int] = []
    keyframes: list[int] = []
    # A container of its own: seeking back to the start is unreliable in some formats (MPEG-TS).
    with _open(path) as container:
        stream = container.streams.video[0]
        time_base = stream.time_base
        start = stream.start_time
        if time_base is None or start is None:
            return None
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                if packet.pts is None or packet.dts is None:
                    return None
                # dts never exceeds pts, so once dts is past the end no earlier-presented frame follows.
                if (packet.dts - start) * time_base >= end:
                    break
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keyframes.append(packet.pts)
        except av.error.FFmpegError:
            return None
    pts.sort()
    keyframes.sort()
    if len(set(pts)) != len(pts) or not keyframes or keyframes[0] != pts[0]:
        return None
    wanted: list[int] = []
    next_point = Fraction(0)
    for p in pts:
        time = (p - start) * time_base
        if time >= end:
            break
        if time >= next_point:
            next_point = (time // step + 1) * step
            wanted.append(p)
    return _SeekPlan(pts, keyframes, wanted, start, time_base)


def _seeking(
    container: InputContainer, stream: VideoStream, plan: _SeekPlan
) -> Iterator[tuple[int, Fraction, VideoFrame]]:
    """Jump to the keyframe before each wanted frame when that skips enough frames, else decode on."""
    frames: Iterator[VideoFrame] = _decode_quietly(container.decode(stream))
    position = -1  # index (into plan.pts) of the last decoded frame
    for target in plan.wanted:
        key = plan.keyframes[bisect.bisect_right(plan.keyframes, target) - 1]
        key_idx = bisect.bisect_left(plan.pts, key)
        if key_idx - position > _MIN_FRAMES_SKIPPED_BY_SEEK:
            try:
                container.seek(key, stream=stream, backward=True)
            except av.error.FFmpegError as exc:
                log.warning("video_seek_failed", error=str(exc))
                return
            frames = _decode_quietly(container.decode(stream))
        for frame in frames:
            if frame.pts is None:
                continue
            position = bisect.bisect_left(plan.pts, frame.pts)
            if frame.pts >= target:
                yield position, (frame.pts - plan.start) * plan.time_base, frame
                break
        else:
            return


def _thumbnail(frame: VideoFrame, size: int) -> np.ndarray:
    small = frame.reformat(width=size, height=size, format="rgb24", interpolation="AREA").to_ndarray()
    return np.asarray(small.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32))


def _rotation(frame: VideoFrame, stream: VideoStream) -> int:
    """Counter-clockwise quarter turns (in degrees) that make ``frame`` upright."""
    degrees = float(frame.rotation)
    if not degrees and "rotate" in stream.metadata:
        # Older FFmpeg builds exported the matrix as a clockwise "rotate" tag.
        try:
            degrees = -float(stream.metadata["rotate"])
        except ValueError:
            degrees = 0.0
    return round(degrees / 90) % 4 * 90


_TURNS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def _upright(frame: VideoFrame, stream: VideoStream) -> Image.Image:
    image = Image.fromarray(frame.to_ndarray(format="rgb24"))
    turn = _TURNS.get(_rotation(frame, stream))
    return image.transpose(turn) if turn is not None else image
