"""Video tagging throughput: seconds of video analysed per wall second, through the whole stack vs in-process.

Stack: ``POST /api/tag_video_frames/`` with the clip as a multipart ``video_file`` upload, a real token and
a trained image dataset (gateway -> object store -> video_service: download, sample, batch, ONNX, head).
Baseline: this process decodes the same clip with PyAV, keeps the same sampled frames (first frame at or
after each ``every_ms``), preprocesses them with the same encoder and runs the same ONNX model in batches
of 32: no bus, no temp file, no pipelining. An extra row sends the gateway's VIDEO_TAG request straight
to video_service over NATS. Run: ``python -m bench.video`` (about 2 min; ``--quick`` about 40 s).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from bench._stack import (
    BenchStack,
    Result,
    Span,
    add_stack_args,
    bench_stack,
    load_note,
    make_image_dataset,
    measure,
    models_dir,
    print_ratio,
    rotated,
    service_env,
    trained_head,
    verdict,
    wait_ready,
)
from modelkit.onnx.image import ImageEncoder
from shared.bus import Bus
from shared.schemas.media import MediaInput, TagVideoReply, TagVideoRequest
from shared.subjects import BLOBS_BUCKET, VIDEO_TAG
from tests.media_video import photo_full, write_video

DATASET = "bench-scenes"
SERVICES = ("vision_service", "video_service", "trainer", "gateway")
METERED = ("gateway", "video_service")
TARGET = 0.7


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


def in_process(encoder: ImageEncoder, path: Path, every_ms: int, batch: int = 32) -> int:
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


def timed(seconds: int, run: Callable[[], Awaitable[int]], frames: dict[str, int],
          key: str) -> Callable[[], Awaitable[list[Span]]]:
    """One video as one span; the frames analysed go to ``frames[key]`` for the sanity check."""

    async def go() -> list[Span]:
        t0 = time.perf_counter()
        frames[key] = await run()
        return [(0.0, time.perf_counter() - t0, seconds)]

    return go


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=models_dir())
    parser.add_argument("--model", default="image/efficientnet-lite0")
    parser.add_argument("--seconds", type=int, default=30, help="clip length")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--every-ms", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--quick", action="store_true", help="a 10 s clip, every 500 ms, 2 rounds")
    add_stack_args(parser)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.every_ms = 10, 2, [500]
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kashf-bench-video-") as tmp, \
            bench_stack(Path(tmp), SERVICES, service_env(args, KASHF_SYNC_VIDEO_SECONDS="600")) as bs:
        # The services boot while this process encodes the clip and loads its baseline.
        clip = Path(tmp) / "clip.mp4"
        make_clip(clip, args.seconds)
        encoder = ImageEncoder(args.models_dir / args.model, device="auto")
        encoder.warmup()
        print(f"clip: {args.seconds} s, 640x360, 25 fps, {clip.stat().st_size / 2**20:.1f} MiB; "
              f"model {encoder.model_id}; {load_note()}")
        wait_ready(bs)
        loop = asyncio.new_event_loop()
        try:
            results = loop.run_until_complete(run_rounds(bs, encoder, clip, args))
        finally:
            loop.close()
    report(results, args, time.perf_counter() - t_start)


async def run_rounds(bs: BenchStack, encoder: ImageEncoder, clip: Path,
                     args: argparse.Namespace) -> dict[str, Result]:
    data = await asyncio.to_thread(clip.read_bytes)
    async with bs.client() as api:
        head, tags = await trained_head(bs, api, DATASET, make_image_dataset)
        bus = await Bus.connect(bs.nats_url, "bench")
        store = await bus.js.object_store(BLOBS_BUCKET)
        await store.put("bench-clip", data)
        frames: dict[str, int] = {}

        async def baseline(every_ms: int) -> int:
            return await asyncio.to_thread(in_process, encoder, clip, every_ms)

        async def http(every_ms: int) -> int:
            fields = {"dataset": DATASET, "every_ms": str(every_ms), "min_frame_diff": "0"}
            r = await api.post("/api/tag_video_frames/", data=fields,
                               files=[("video_file", ("clip.mp4", data, "video/mp4"))])
            if r.status_code != 200:
                raise RuntimeError(f"tag_video_frames answered {r.status_code}: {r.text[:300]}")
            [video] = r.json()
            if video.get("error") or not video["frames"]:
                raise RuntimeError(f"tag_video_frames: {video}")
            return len(video["frames"])  # frames whose tags changed, not frames analysed

        async def nats(every_ms: int) -> int:
            request = TagVideoRequest(head=head, tags=tags, video=MediaInput(blob_key="bench-clip"),
                                      every_ms=every_ms, min_frame_diff=0)
            reply = await bus.request(VIDEO_TAG, request, TagVideoReply, timeout_s=600)
            if reply.error:
                raise RuntimeError(f"video_service: {reply.error}")
            return reply.analysed_frames

        try:
            results: dict[str, Result] = {}
            meter = bs.meter(METERED)
            for every_ms in args.every_ms:
                paths = {
                    f"base@{every_ms}": (f"baseline: in-process decode + ONNX batch 32, every {every_ms} ms",
                                         baseline),
                    f"http@{every_ms}": (f"stack: HTTP multipart video_file, every {every_ms} ms", http),
                    f"nats@{every_ms}": (f"extra: video_service NATS (object store), every {every_ms} ms",
                                         nats),
                }
                for key, (name, fn) in paths.items():
                    results[key] = Result(name, unit="video-s")
                    await fn(every_ms)  # warm each path (head cache, decoder) outside the rounds
                runs = {key: timed(args.seconds, _bind(fn, every_ms), frames, key)
                        for key, (_, fn) in paths.items()}
                for round_ in range(args.rounds):
                    for key in rotated(list(runs), round_):
                        await measure(meter, results[key], runs[key], None)
                assert frames[f"nats@{every_ms}"] == frames[f"base@{every_ms}"], frames
                print(f"every {every_ms} ms: {frames[f'base@{every_ms}']} frames analysed, "
                      f"{frames[f'http@{every_ms}']} returned by the API ({load_note()})")
            return results
        finally:
            await bus.close()


def _bind(fn: Callable[[int], Awaitable[int]], every_ms: int) -> Callable[[], Awaitable[int]]:
    async def run() -> int:
        return await fn(every_ms)

    return run


def report(results: dict[str, Result], args: argparse.Namespace, elapsed: float) -> None:
    print(f"\nclip {args.seconds} s; {args.rounds} round(s) per configuration, interleaved; "
          f"rate = median over rounds of clip seconds / wall seconds; latency = wall time per video")
    for r in results.values():
        print(r.row(width=66))
    print("\nCPU ms per second of video, per process (client = this process: the baseline, or the client)")
    for r in results.values():
        if (line := r.cpu_row(width=66)) is not None:
            print(line)
    print("\nratios (throughput; > 1 means the first is faster)")
    ratios = {}
    for every_ms in args.every_ms:
        ratios[every_ms] = print_ratio(results, f"http@{every_ms}", f"base@{every_ms}")
        print_ratio(results, f"nats@{every_ms}", f"base@{every_ms}")
    print(f"\ntargets (>= {TARGET} x in-process)")
    for every_ms, ratio in ratios.items():
        verdict(f"stack upload, every {every_ms} ms", None if ratio is None else ratio >= TARGET,
                "not measured" if ratio is None else f"{ratio:.2f}")
    print(f"\ntotal {elapsed:.0f} s; {load_note()}")


if __name__ == "__main__":
    main()
