"""Image tagging throughput and latency through the whole stack, against the in-process pipeline.

Stack: ``POST /api/tag_images/`` over HTTP with a real token and a trained image dataset, by multipart
upload and by URL from a loopback server (gateway -> Postgres -> NATS -> vision_service: fetch or
object store, decode, preprocess, dynamic batcher, ONNX, head). Baseline, interleaved round by round:
the same decode + preprocess (threads) + ONNX batches called in this process. Extra rows send the
gateway's VISION_TAG request straight to vision_service over NATS, to locate the overhead.
HTTP load comes from aiohttp (``BenchStack.load_client``).
Run: ``python -m bench.image`` (about 2 min; ``--quick`` about 40 s; needs ``make models``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image, ImageOps
from skimage import data as skdata
from sklearn.datasets import load_sample_images

from bench._stack import (
    BenchStack,
    RequestFailed,
    Result,
    Span,
    add_stack_args,
    bench_stack,
    load_note,
    make_image_dataset,
    measure,
    models_dir,
    print_failures,
    print_ratio,
    rotated,
    serve_files,
    service_env,
    timed_clients,
    timed_loop,
    trained_head,
    verdict,
    wait_ready,
)
from modelkit.onnx.image import ImageEncoder
from shared.bus import Bus
from shared.errors import KashfError
from shared.schemas.inference import HeadRef, TagRef, TagReply
from shared.schemas.media import MediaInput, TagImagesRequest
from shared.subjects import BLOBS_BUCKET, VISION_TAG
from vision_service.decode import decode_image

DATASET = "bench-photos"
SERVICES = ("vision_service", "trainer", "gateway")
METERED = ("gateway", "vision_service")
MAX_PIXELS = 40_000_000
TARGET = 0.7



def make_images(n: int, seed: int = 0) -> list[bytes]:
    """Distinct JPEGs (q90) of real photos: crops, flips and sizes from 480 to 1600 px wide."""
    sources = [Image.fromarray(getattr(skdata, name)()).convert("RGB")
               for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")]
    sources += [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = sources[i % len(sources)]
        frac = rng.uniform(0.6, 1.0)
        w, h = int(img.width * frac), int(img.height * frac)
        left, top = int(rng.uniform(0, img.width - w)), int(rng.uniform(0, img.height - h))
        view = img.crop((left, top, left + w, top + h))
        if i % 2:
            view = ImageOps.mirror(view)
        width = int(rng.uniform(480, 1600))
        view = view.resize((width, max(1, round(view.height * width / view.width))), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        view.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def in_process(encoder: ImageEncoder, pool: ThreadPoolExecutor, images: list[bytes], batch: int,
               budget_s: float) -> list[Span]:
    """Decode + preprocess on ``pool``, one ONNX call per batch, for about ``budget_s``."""

    def prepare(data: bytes) -> np.ndarray:
        img = decode_image(data, max_pixels=MAX_PIXELS, min_side=encoder.pre.resize_shorter)
        return encoder.preprocess(img)

    def step(k: int) -> int:
        i = (k * batch) % (len(images) - batch + 1)
        encoder.encode_batch(np.stack(list(pool.map(prepare, images[i : i + batch]))))
        return batch

    return timed_loop(step, budget_s)


async def batch_clients(call: Callable[[list[int]], Awaitable[None]], n_images: int, clients: int,
                        per_request: int, budget_s: float, failures: Counter[str] | None = None) -> list[Span]:
    """``clients`` concurrent requesters of ``per_request`` images each, for about ``budget_s``."""

    async def step(c: int, k: int) -> int:
        first = (c + k * clients) * per_request
        await call([(first + j) % n_images for j in range(per_request)])
        return per_request

    return await timed_clients(step, clients, budget_s, failures)


async def _check(r: aiohttp.ClientResponse, expected: int) -> None:
    body = await r.read()
    if r.status != 200:
        raise RequestFailed(f"HTTP {r.status} {body[:200].decode(errors='replace')}")
    items = json.loads(body)
    failed = [x["error"] for x in items if x.get("error")]
    if failed or len(items) != expected:
        raise RequestFailed(f"items refused: {failed[:2]}")


def http_upload(api: aiohttp.ClientSession, images: list[bytes]) -> Callable[[list[int]], Awaitable[None]]:
    async def call(indices: list[int]) -> None:
        form = aiohttp.FormData()
        form.add_field("dataset", DATASET)
        for i in indices:
            form.add_field("image_file", images[i], filename=f"{i}.jpg", content_type="image/jpeg")
        async with api.post("/api/tag_images/", data=form) as r:
            await _check(r, len(indices))

    return call


def http_urls(api: aiohttp.ClientSession, url_of: Callable[[int], str]) -> Callable[[list[int]], Awaitable[None]]:
    async def call(indices: list[int]) -> None:
        body = {"dataset": DATASET, "image_urls": [url_of(i) for i in indices]}
        async with api.post("/api/tag_images/", json=body) as r:
            await _check(r, len(indices))

    return call


def nats_call(bus: Bus, head: HeadRef, tags: list[TagRef], images: list[bytes] | None,
              url_of: Callable[[int], str]) -> Callable[[list[int]], Awaitable[None]]:
    """The gateway's VISION_TAG request; ``images`` given: uploads through the object store first."""

    async def call(indices: list[int]) -> None:
        if images is not None:
            store = await bus.js.object_store(BLOBS_BUCKET)
            items = []
            for i in indices:
                key = f"bench-{uuid.uuid4().hex}"
                await store.put(key, images[i])
                items.append(MediaInput(blob_key=key, name=f"{i}.jpg"))
        else:
            items = [MediaInput(url=url_of(i)) for i in indices]
        try:
            reply = await bus.request(VISION_TAG, TagImagesRequest(head=head, tags=tags, images=items), TagReply)
        except KashfError as exc:
            raise RequestFailed(f"{exc.status} {exc.error_code}: {exc}") from exc
        if images is not None:
            for item in items:
                assert item.blob_key is not None
                await store.delete(item.blob_key)
        failed = [item.error for item in reply.items if item.error]
        if failed:
            raise RequestFailed(f"items refused: {failed[:2]}")

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=models_dir())
    parser.add_argument("--model", default="image/efficientnet-lite0")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--decode-workers", type=int, default=2, help="in-process; the service's own setting")
    parser.add_argument("--seconds", type=float, default=3.0, help="per configuration and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s per configuration")
    add_stack_args(parser)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 2.0, 1
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kashf-bench-image-") as tmp, \
            bench_stack(Path(tmp), SERVICES, service_env(args, KASHF_DECODE_WORKERS=str(args.decode_workers))) as bs:
        # The services boot while this process makes the images and loads its baseline.
        images = make_images(args.images)
        mean_kb = sum(map(len, images)) / len(images) / 1024
        print(f"{len(images)} JPEGs (mean {mean_kb:.0f} KiB, 480 to 1600 px wide), model "
              f"{args.models_dir / args.model}; {load_note()}")
        encoder = ImageEncoder(args.models_dir / args.model, device="auto")
        encoder.warmup()
        wait_ready(bs)
        with serve_files(images, "image/jpeg", ".jpg") as url_of, \
                ThreadPoolExecutor(args.decode_workers) as pool:
            base: dict[str, tuple[str, Callable[[], list[Span]]]] = {
                "inproc32": (f"baseline: in-process decode x{args.decode_workers} + ONNX, batch 32",
                             lambda: in_process(encoder, pool, images, 32, args.seconds)),
                "inproc1": ("baseline: in-process decode + ONNX, batch 1",
                            lambda: in_process(encoder, pool, images, 1, args.seconds)),
            }
            loop = asyncio.new_event_loop()
            try:
                results = loop.run_until_complete(run_rounds(bs, base, images, url_of, args))
            finally:
                loop.close()
    report(results, args, time.perf_counter() - t_start)


async def run_rounds(bs: BenchStack, base: dict[str, tuple[str, Callable[[], list[Span]]]], images: list[bytes],
                     url_of: Callable[[int], str], args: argparse.Namespace) -> dict[str, Result]:
    async with bs.client() as api, bs.load_client() as load:
        head, tags = await trained_head(bs, api, DATASET, make_image_dataset)
        bus = await Bus.connect(bs.nats_url, "bench")
        try:
            n = len(images)
            calls: dict[str, tuple[str, Callable[[list[int]], Awaitable[None]], int, int]] = {
                "up2x32": ("stack: HTTP multipart uploads, 2 clients x 32", http_upload(load, images), 2, 32),
                "url2x32": ("stack: HTTP image_urls (loopback), 2 clients x 32", http_urls(load, url_of), 2, 32),
                "up32x1": ("stack: HTTP multipart uploads, 32 clients x 1", http_upload(load, images), 32, 1),
                "url1x1": ("stack: HTTP image_urls (loopback), 1 client x 1", http_urls(load, url_of), 1, 1),
                "natsup2x32": ("extra: vision_service NATS, object store, 2 x 32",
                               nats_call(bus, head, tags, images, url_of), 2, 32),
                "natsurl2x32": ("extra: vision_service NATS, URLs, 2 x 32",
                                nats_call(bus, head, tags, None, url_of), 2, 32),
            }
            # Warm every path once and check that a trained tag comes back.
            r = await api.post("/api/tag_images/", json={"dataset": DATASET, "image_urls": [url_of(0), url_of(1)]})
            assert r.status_code == 200 and len(r.json()) == 2, r.text
            assert {t["id"] for x in r.json() for t in x["tags"]}, r.text
            for _, call, _, _ in calls.values():
                await call([2, 3])

            results = {key: Result(name, unit="images") for key, (name, _) in base.items()}
            runs: dict[str, Callable[[], Awaitable[list[Span]]]] = {}
            for key, (_, fn) in base.items():
                runs[key] = _threaded(fn)
            for key, (name, call, clients, per) in calls.items():
                results[key] = Result(name, unit="images")
                runs[key] = _clients(call, n, clients, per, args.seconds, results[key].failures)
            meter = bs.meter(METERED)
            for round_ in range(args.rounds):
                for key in rotated(list(runs), round_):
                    await measure(meter, results[key], runs[key], args.seconds)
                print(f"round {round_ + 1}/{args.rounds} done ({load_note()})")
            return results
        finally:
            await bus.close()


def _threaded(fn: Callable[[], list[Span]]) -> Callable[[], Awaitable[list[Span]]]:
    async def run() -> list[Span]:
        return await asyncio.to_thread(fn)

    return run


def _clients(call: Callable[[list[int]], Awaitable[None]], n: int, clients: int, per: int, seconds: float,
             failures: Counter[str]) -> Callable[[], Awaitable[list[Span]]]:
    async def run() -> list[Span]:
        return await batch_clients(call, n, clients, per, seconds, failures)

    return run


def report(results: dict[str, Result], args: argparse.Namespace, elapsed: float) -> None:
    print(f"\n{args.rounds} round(s) of {args.seconds:g} s per configuration, interleaved; "
          f"throughput = median of rounds; latency per request (per batch for in-process)")
    for r in results.values():
        print(r.row())
    print("\nCPU ms per image, per process (client = this process: the in-process pipeline, or the client)")
    for r in results.values():
        if (line := r.cpu_row()) is not None:
            print(line)
    failed = print_failures(results)
    print("\nratios (throughput; > 1 means the first is faster)")
    ratios = {key: print_ratio(results, key, "inproc32") for key in ("up2x32", "url2x32", "up32x1")}
    print_ratio(results, "natsup2x32", "inproc32")
    print_ratio(results, "natsurl2x32", "inproc32")
    print_ratio(results, "url1x1", "inproc1")
    print(f"\ntargets (>= {TARGET} x in-process batch 32)")
    for key, ratio in ratios.items():
        verdict(results[key].name, None if ratio is None else ratio >= TARGET,
                "not measured" if ratio is None else f"{ratio:.2f}")
    verdict("no request refused", not failed, "none" if not failed else "see FAILED above")
    print(f"  single image p50: {results['url1x1'].p(50):.1f} ms through the stack vs "
          f"{results['inproc1'].p(50):.1f} ms in-process")
    print(f"\ntotal {elapsed:.0f} s; {load_note()}")


if __name__ == "__main__":
    main()
