"""Image tagging throughput and latency: the vision service over NATS against the in-process pipeline.

Baseline: the same decode + preprocess (threads) + ONNX batches called in this process. The service
path adds NATS, uploads through the object store or fetches from a loopback server, and batching.
Run: ``python -m bench.image`` (needs ``make models``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageOps
from skimage import data as skdata
from sklearn.datasets import load_sample_images

from shared import devstack
from shared.bus import Bus
from shared.inference.image import ImageEncoder
from shared.schemas.inference import HeadRef, TagReply
from shared.schemas.media import MediaInput, TagImagesRequest
from shared.subjects import BLOBS_BUCKET, VISION_TAG
from vision_service.decode import decode_image

REPO = Path(__file__).resolve().parent.parent
MAX_PIXELS = 40_000_000


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


@dataclass
class Result:
    name: str
    images: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    def row(self) -> str:
        lat = np.array(self.latencies_ms)
        return (f"{self.name:<52} {self.rate:8.1f} images/s   p50 {np.percentile(lat, 50):7.1f} ms"
                f"   p95 {np.percentile(lat, 95):7.1f} ms")


def bench_in_process(encoder: ImageEncoder, images: list[bytes], batch: int, workers: int) -> Result:
    """Decode + preprocess in ``workers`` threads, then one ONNX call per batch; latency per batch."""

    def prepare(data: bytes) -> np.ndarray:
        img = decode_image(data, max_pixels=MAX_PIXELS, min_side=encoder.pre.resize_shorter)
        return encoder.preprocess(img)

    with ThreadPoolExecutor(workers) as pool:
        encoder.encode_batch(np.stack(list(pool.map(prepare, images[:batch]))))  # warm
        latencies = []
        start = time.perf_counter()
        for i in range(0, len(images) - batch + 1, batch):
            t0 = time.perf_counter()
            encoder.encode_batch(np.stack(list(pool.map(prepare, images[i : i + batch]))))
            latencies.append((time.perf_counter() - t0) * 1000)
        seconds = time.perf_counter() - start
    return Result(f"in-process decode x{workers} + ONNX, batch {batch}", len(latencies) * batch,
                  seconds, latencies)


async def bench_service(nats_url: str, images: list[bytes], clients: int, per_request: int, how: str,
                        url_of: Callable[[int], str]) -> Result:
    """``clients`` concurrent requesters of ``per_request`` images each; latency includes the upload."""
    bus = await Bus.connect(nats_url, "bench")
    store = await bus.js.object_store(BLOBS_BUCKET)
    todo = list(reversed(range(len(images))))
    latencies: list[float] = []
    done = 0

    async def media(i: int) -> MediaInput:
        if how == "upload":
            key = f"bench-{uuid.uuid4().hex}"
            await store.put(key, images[i])
            return MediaInput(blob_key=key)
        return MediaInput(url=url_of(i))

    async def request(indices: list[int]) -> None:
        items = [await media(i) for i in indices]
        reply = await bus.request(VISION_TAG, TagImagesRequest(head=HeadRef(dataset_id=1), tags=[],
                                                               images=items), TagReply)
        failed = [item.error for item in reply.items if item.error]
        if failed:
            raise RuntimeError(f"service refused bench images: {failed[:3]}")

    async def client() -> None:
        nonlocal done
        while todo:
            indices = [todo.pop() for _ in range(min(per_request, len(todo)))]
            t0 = time.perf_counter()
            await request(indices)
            latencies.append((time.perf_counter() - t0) * 1000)
            done += len(indices)

    try:
        await request(list(range(min(8, len(images)))))  # warm
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        seconds = time.perf_counter() - start
    finally:
        await bus.close()
    label = "uploads (object store)" if how == "upload" else "URLs (loopback)"
    return Result(f"vision_service over NATS, {label}, {clients}x{per_request}", done, seconds, latencies)


@contextmanager
def serve_files(images: list[bytes]) -> Iterator[Callable[[int], str]]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = images[int(self.path.strip("/").split(".")[0])]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    try:
        yield lambda i: f"http://127.0.0.1:{port}/{i}.jpg"
    finally:
        httpd.shutdown()
        httpd.server_close()


def start_service(
    nats_url: str, models_dir: Path, args: argparse.Namespace, log: Path
) -> subprocess.Popen[bytes]:
    port = devstack.free_port()
    env = {**os.environ, "NATS_URL": nats_url, "KASHF_MODELS_DIR": str(models_dir),
           "KASHF_HEALTH_HOST": "127.0.0.1", "KASHF_HEALTH_PORT": str(port),
           "KASHF_MAX_WAIT_MS": str(args.max_wait_ms), "KASHF_DECODE_WORKERS": str(args.decode_workers),
           "FETCH_ALLOW_HOSTS": "127.0.0.1", "KASHF_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "vision_service"], cwd=REPO, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vision_service exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("vision_service not ready after 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default_models = Path(os.environ.get("KASHF_MODELS_DIR", REPO / "models"))
    parser.add_argument("--models-dir", type=Path, default=default_models)
    parser.add_argument("--model", default="image/efficientnet-lite0")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--max-wait-ms", type=float, default=4.0)
    parser.add_argument("--decode-workers", type=int, default=2)
    args = parser.parse_args()
    images = make_images(args.images)
    mean_kb = sum(map(len, images)) / len(images) / 1024
    print(f"{len(images)} JPEGs (mean {mean_kb:.0f} KiB), {os.cpu_count()} cores, "
          f"model {args.models_dir / args.model}")

    results: dict[str, Result] = {}
    encoder = ImageEncoder(args.models_dir / args.model, device="auto")
    encoder.warmup()
    results["inproc"] = bench_in_process(encoder, images, 32, args.decode_workers)
    results["inproc1"] = bench_in_process(encoder, images, 1, 1)
    del encoder  # free its threads for the service process

    with tempfile.TemporaryDirectory() as tmp, serve_files(images) as url_of:
        nats, nats_url = devstack.start_nats(Path(tmp) / "nats")
        service = start_service(nats_url, args.models_dir, args, Path(tmp) / "service.log")
        try:
            runs = [("upload", 32, 1), ("url", 32, 1), ("upload", 2, 32), ("url", 2, 32), ("url", 1, 1)]
            for how, clients, per in runs:
                results[f"{how}{clients}x{per}"] = asyncio.run(
                    bench_service(nats_url, images, clients, per, how, url_of))
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(30)
            nats.terminate()
            nats.wait(10)

    print(f"\nservice max_wait_ms={args.max_wait_ms:g} decode_workers={args.decode_workers}")
    for r in results.values():
        print(r.row())
    print("\nratios (throughput; target >= 0.7 against the in-process pipeline)")
    base = results["inproc"]
    for key, r in results.items():
        if key.startswith(("upload", "url")):
            print(f"  {r.name}  /  in-process batch 32: {r.rate / base.rate:5.2f}")
    single = results["url1x1"].rate / results["inproc1"].rate
    print(f"  service 1x1 URL  /  in-process batch 1: {single:5.2f}")


if __name__ == "__main__":
    main()
