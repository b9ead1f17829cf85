"""Video tagging throughput: seconds of video analysed per wall second, video_service over NATS vs in-process.

Baseline: this process decodes the same clip with PyAV, takes the same sampled frames (first frame at or
after each ``every_ms``), preprocesses them with the same encoder and runs the same ONNX model in batches
of 32: no bus, no temp file, no pipelining. The service path: upload to the object store, one VIDEO_TAG
request to ``python -m video_service`` (its own process), download to a temp file, sample in a thread,
batch through the dynamic batcher, tag, reply. Run: ``python -m bench.video`` (needs ``make models``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shared import devstack  # noqa: E402
from shared.bus import Bus  # noqa: E402
from shared.inference.image import ImageEncoder  # noqa: E402
from shared.schemas.inference import HeadRef, TagRef  # noqa: E402
from shared.schemas.media import MediaInput, TagVideoReply, TagVideoRequest  # noqa: E402
from shared.subjects import BLOBS_BUCKET, VIDEO_TAG  # noqa: E402
from tests.media_video import photo_full, write_video  # noqa: E402


def make_clip(path: Path, seconds: int, fps: int = 25, size: tuple[int, int] = (640, 360)) -> None:
    """A slow pan across four real photos, a hard cut every quarter: realistic work for the decoder."""
    names = ["astronaut", "coffee", "chelsea", "rocket"]
    w, h = size
    bigs = [Image.fromarray(photo_full(n)).convert("RGB").resize((2 * w, 2 * h)) for n in names]
    frames = seconds * fps
    per_shot = frames // len(names) + 1

    def gen() -> Iterator[tuple[np.ndarray, int]]:
        for i in range(frames):
            big = bigs[i // per_shot]
            x = int((i % per_shot) / per_shot * w)
            yield np.asarray(big.crop((x, h // 2, x + w, h // 2 + h))), i

    write_video(path, gen(), time_base=Fraction(1, fps), rate=fps)


def baseline(encoder: ImageEncoder, path: Path, every_ms: int, batch: int = 32) -> int:
    """Decode every frame, keep the sampled ones, embed them in batches; returns frames embedded."""
    step = Fraction(every_ms, 1000)
    pending: list[np.ndarray] = []
    done = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = stream.time_base
        assert tb is not None
        start = stream.start_time or 0
        next_point = Fraction(0)
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            t = (frame.pts - start) * tb
            if t < next_point:
                continue
            next_point = (t // step + 1) * step
            pending.append(encoder.preprocess(Image.fromarray(frame.to_ndarray(format="rgb24"))))
            if len(pending) == batch:
                encoder.encode_core(np.stack(pending))
                done += len(pending)
                pending = []
    if pending:
        encoder.encode_core(np.stack(pending))
        done += len(pending)
    return done


def start_service(nats_url: str, models_dir: Path, health_port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "NATS_URL": nats_url, "KASHF_MODELS_DIR": str(models_dir), "KASHF_DEVICE": "cpu",
        "KASHF_HEALTH_PORT": str(health_port), "KASHF_LOG_LEVEL": "WARNING",
        "KASHF_SYNC_VIDEO_SECONDS": "600",
    }
    proc = subprocess.Popen([sys.executable, "-m", "video_service"], cwd=REPO, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{health_port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("video_service did not become ready")


async def through_service(client: Bus, key: str, every_ms: int, concurrent: int) -> tuple[float, int]:
    request = TagVideoRequest(
        head=HeadRef(dataset_id=1, version=None), tags=[TagRef(id=1, title="x")],
        video=MediaInput(blob_key=key), every_ms=every_ms,
    )
    start = time.perf_counter()
    replies = await asyncio.gather(*(
        client.request(VIDEO_TAG, request, TagVideoReply, timeout_s=600) for _ in range(concurrent)
    ))
    return time.perf_counter() - start, sum(r.analysed_frames for r in replies)


async def run(args: argparse.Namespace) -> None:
    models_dir = Path(os.environ.get("KASHF_MODELS_DIR", REPO / "models"))
    work = Path(tempfile.mkdtemp(prefix="kashf-vbench-"))
    clip = work / "clip.mp4"
    make_clip(clip, args.seconds)
    encoder = ImageEncoder(models_dir / "image/efficientnet-lite0", device="cpu")
    encoder.warmup()
    nats_proc, nats_url = devstack.start_nats(work / "nats")
    service = start_service(nats_url, models_dir, devstack.free_port())
    client = await Bus.connect(nats_url, "bench")
    try:
        store = await client.js.object_store(BLOBS_BUCKET)
        await store.put("bench-clip", clip.read_bytes())
        print(f"clip: {args.seconds} s, 640x360, 25 fps, {clip.stat().st_size / 2**20:.1f} MiB; "
              f"{os.cpu_count()} cores; model {encoder.model_id}")
        for every_ms in args.every_ms:
            await through_service(client, "bench-clip", every_ms, 1)  # warm the service's path
            base, svc, svc2 = [], [], []
            frames = 0
            for _ in range(args.repeats):
                # Interleaved, so both sides see the same machine state.
                t0 = time.perf_counter()
                frames = await asyncio.to_thread(baseline, encoder, clip, every_ms)
                base.append(time.perf_counter() - t0)
                wall, analysed = await through_service(client, "bench-clip", every_ms, 1)
                assert analysed == frames, (analysed, frames)
                svc.append(wall)
                wall2, _ = await through_service(client, "bench-clip", every_ms, 2)
                svc2.append(wall2)
            b, s, s2 = (statistics.median(x) for x in (base, svc, svc2))
            rate_b, rate_s, rate_s2 = args.seconds / b, args.seconds / s, 2 * args.seconds / s2
            print(f"every_ms={every_ms:5d} ({frames} frames): in-process {rate_b:6.1f} s video/s | "
                  f"video_service over NATS {rate_s:6.1f} s video/s (ratio {rate_s / rate_b:.2f}) | "
                  f"2 concurrent videos {rate_s2:6.1f} s video/s (ratio {rate_s2 / rate_b:.2f})")
    finally:
        await client.close()
        service.send_signal(signal.SIGTERM)
        service.wait(30)
        nats_proc.terminate()
        nats_proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--every-ms", type=int, nargs="+", default=[100, 500, 2000])
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
