"""Test videos built with PyAV (libx264, yuv420p) from skimage's photos, each with its ground truth.

Every helper writes one small file under ``directory`` and returns a ``MadeVideo`` that says which
photo is visible at each frame index and when each frame is presented (seconds from the stream start).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
from pathlib import Path

import av
import numpy as np
import skimage.data
from PIL import Image

SIZE = (320, 240)
PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket")


@dataclass(frozen=True)
class MadeVideo:
    """A written test video and what it shows: per frame index, the photo and the presentation time."""

    path: Path
    frame_photos: list[str]
    frame_times: list[float]
    cut_times: list[float] = field(default_factory=list)
    rotation: int = 0

    def photo_at(self, time_s: float) -> str:
        """Photo visible at ``time_s``: that of the last frame presented at or before it."""
        idx = max(i for i, t in enumerate(self.frame_times) if t <= time_s + 1e-9)
        return self.frame_photos[idx]


def photo_full(name: str) -> np.ndarray:
    """A skimage photo at its own size, RGB uint8."""
    arr: np.ndarray = getattr(skimage.data, name)()
    return arr


@cache
def photo(name: str, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A skimage photo centre-cropped to the aspect of ``size`` and resized to it (RGB uint8)."""
    img = Image.fromarray(photo_full(name)).convert("RGB")
    w, h = size
    scale = min(img.width / w, img.height / h)
    cw, ch = round(w * scale), round(h * scale)
    left, top = (img.width - cw) // 2, (img.height - ch) // 2
    img = img.crop((left, top, left + cw, top + ch)).resize(size, Image.Resampling.LANCZOS)
    return np.asarray(img)


def nearest_photo(image: Image.Image, names: Sequence[str] = PHOTO_NAMES) -> str:
    """Which of ``names`` the decoded ``image`` shows (smallest mean absolute difference)."""
    arr = np.asarray(image.convert("RGB").resize(SIZE), dtype=np.int16)
    return min(names, key=lambda n: float(np.abs(arr - photo(n).astype(np.int16)).mean()))


def write_video(
    path: Path,
    frames: Iterable[tuple[np.ndarray, int]],
    *,
    time_base: Fraction,
    rate: int = 25,
    container_format: str | None = None,
    faststart: bool = False,
    rotation: int = 0,
    gop: int | None = None,
) -> None:
    """Encode ``(rgb array, pts in time_base)`` pairs with libx264/yuv420p (B-frames on, as real files)."""
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format=container_format, options=options) as out:
        stream = out.add_stream("libx264", rate=rate)
        first = True
        for arr, pts in frames:
            if first:
                stream.height, stream.width = arr.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.codec_context.time_base = time_base
                opts: dict[str, object] = {"preset": "veryfast", "crf": "18"}
                if gop is not None:
                    opts["g"] = str(gop)
                stream.options = opts
                if rotation:
                    stream.set_display_rotation(rotation)
                first = False
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts = pts
            frame.time_base = time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _cfr(path: Path, photos: list[np.ndarray], names: list[str], fps: int, **kw: object) -> MadeVideo:
    tb = Fraction(1, fps)
    write_video(path, ((a, i) for i, a in enumerate(photos)), time_base=tb, rate=fps, **kw)  # type: ignore[arg-type]
    times = [i / fps for i in range(len(photos))]
    cuts = [times[i] for i in range(1, len(names)) if names[i] != names[i - 1]]
    return MadeVideo(path, names, times, cuts)


def slideshow(
    directory: Path,
    shots: Sequence[tuple[str, int]] = (("astronaut", 25), ("coffee", 25), ("chelsea", 25), ("rocket", 25)),
    *,
    fps: int = 25,
    name: str = "slideshow.mp4",
    **kw: object,
) -> MadeVideo:
    """Hard cuts between photos; ``shots`` is ``(photo, frame count)`` so a 3-frame shot is possible."""
    names = [n for n, count in shots for _ in range(count)]
    return _cfr(directory / name, [photo(n) for n in names], names, fps, **kw)


def short_shot(directory: Path) -> MadeVideo:
    """One second of astronaut, a 3-frame shot of chelsea, one second of coffee."""
    return slideshow(directory, (("astronaut", 25), ("chelsea", 3), ("coffee", 25)), name="short.mp4")


def pan(directory: Path, frames: int = 50, fps: int = 25) -> MadeVideo:
    """A 320x240 window sliding left to right across the full-size coffee photo."""
    big = np.asarray(photo_full("coffee"))
    h, w = big.shape[:2]
    ys = (h - SIZE[1]) // 2
    crops = [
        np.ascontiguousarray(big[ys:ys + SIZE[1], x:x + SIZE[0]])
        for x in np.linspace(0, w - SIZE[0], frames).astype(int)
    ]
    return _cfr(directory / "pan.mp4", crops, ["coffee"] * frames, fps)


def zoom(directory: Path, frames: int = 50, fps: int = 25) -> MadeVideo:
    """A steady zoom into the centre of the astronaut photo (crop shrinks to a third)."""
    big = Image.fromarray(photo_full("astronaut"))
    out = []
    for s in np.linspace(1.0, 1 / 3, frames):
        cw, ch = int(512 * s), int(384 * s)
        left, top = (512 - cw) // 2, (512 - ch) // 2
        out.append(np.asarray(big.crop((left, top, left + cw, top + ch)).resize(SIZE)))
    return _cfr(directory / "zoom.mp4", out, ["astronaut"] * frames, fps)


def fade(directory: Path, hold: int = 25, steps: int = 25, fps: int = 25) -> MadeVideo:
    """Astronaut held, a linear cross-fade to chelsea over ``steps`` frames, chelsea held."""
    a, b = photo("astronaut").astype(np.float32), photo("chelsea").astype(np.float32)
    arrs: list[np.ndarray] = [a.astype(np.uint8)] * hold
    names = ["astronaut"] * hold
    for i in range(1, steps + 1):
        w = i / (steps + 1)
        arrs.append((a * (1 - w) + b * w).round().astype(np.uint8))
        # Mid-fade frames show neither photo; tests skip them.
        names.append("astronaut" if w < 0.3 else "chelsea" if w > 0.7 else "fade")
    arrs += [b.astype(np.uint8)] * hold
    names += ["chelsea"] * hold
    return _cfr(directory / "fade.mp4", arrs, names, fps)


def variable_rate(directory: Path) -> MadeVideo:
    """Irregular frame gaps (10 ms to 700 ms, millisecond time base); photos change at 1.14 s and 2.22 s."""
    gaps_ms = [40, 40, 10, 10, 300, 40, 700, 40, 40, 120, 33, 17, 250, 40, 40, 500, 40, 40, 40, 40, 40]
    pts = [0]
    for g in gaps_ms:
        pts.append(pts[-1] + g)
    names = ["astronaut" if p < 1000 else "coffee" if p < 2000 else "rocket" for p in pts]
    path = directory / "vfr.mp4"
    write_video(path, ((photo(n), p) for n, p in zip(names, pts, strict=True)),
                time_base=Fraction(1, 1000), rate=25)
    # The cuts fall inside gaps: the new photo shows from the first frame after 1.0 s and after 2.0 s.
    return MadeVideo(path, names, [p / 1000 for p in pts], [1.14, 2.22])


def late_start(directory: Path, offset_s: float = 5.0) -> MadeVideo:
    """MPEG-TS whose first frame is stamped ``offset_s`` in (plus the muxer's own delay): start_time != 0."""
    fps = 25
    names = ["astronaut"] * 25 + ["chelsea"] * 25
    path = directory / "late.ts"
    base = round(offset_s * fps)
    write_video(path, ((photo(n), base + i) for i, n in enumerate(names)),
                time_base=Fraction(1, fps), rate=fps, container_format="mpegts")
    return MadeVideo(path, names, [i / fps for i in range(len(names))], [1.0])


def rotated(directory: Path, degrees: int = 90) -> MadeVideo:
    """Frames stored turned clockwise by ``degrees`` with a display matrix that turns them back upright."""
    turn = {90: Image.Transpose.ROTATE_270, -90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180}
    names = ["astronaut"] * 10 + ["coffee"] * 10
    stored = [np.asarray(Image.fromarray(photo(n)).transpose(turn[degrees])) for n in names]
    made = _cfr(directory / "rotated.mp4", stored, names, 25, rotation=degrees)
    return MadeVideo(made.path, made.frame_photos, made.frame_times, made.cut_times, rotation=degrees)


def audio_only(directory: Path) -> Path:
    """One second of a 440 Hz tone, AAC in an .mp4 (no video stream)."""
    path = directory / "tone.mp4"
    rate = 44100
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate)
        t = np.arange(rate, dtype=np.float32) / rate
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def truncated(directory: Path, keep: float = 0.6, faststart: bool = True) -> MadeVideo:
    """A 4-shot slideshow cut to ``keep`` of its bytes; with ``faststart`` the header survives the cut."""
    made = slideshow(directory, name="full.mp4", faststart=faststart)
    data = made.path.read_bytes()
    path = directory / ("truncated.mp4" if faststart else "truncated_noheader.mp4")
    path.write_bytes(data[: int(len(data) * keep)])
    return MadeVideo(path, made.frame_photos, made.frame_times, made.cut_times)


def zip_as_mp4(directory: Path) -> Path:
    """A zip archive (holding a JPEG) renamed ``clip.mp4``."""
    buf = io.BytesIO()
    Image.fromarray(photo("astronaut")).save(buf, format="JPEG")
    path = directory / "clip.mp4"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("astronaut.jpg", buf.getvalue())
    return path


def plain_decode(path: Path) -> list[tuple[int, float]]:
    """Reference: ``(index, seconds from stream start)`` of each frame a plain PyAV decode loop yields.

    Stops at the first decode error, as a truncated file ends there.
    """
    out: list[tuple[int, float]] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        tb = stream.time_base
        assert tb is not None
        try:
            for i, f in enumerate(container.decode(stream)):
                assert f.pts is not None
                out.append((i, float((f.pts - start) * tb)))
        except av.error.FFmpegError:
            pass
    return out
