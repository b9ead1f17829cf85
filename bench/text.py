"""Text embedding throughput and latency: the text service over NATS against named baselines.

Baselines: the same ONNX model called in-process with the same batch sizes, and the same weights in
sentence-transformers on PyTorch. Run: ``python -m bench.text`` (needs ``make models``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from shared import devstack
from shared.bus import Bus
from shared.inference.text import TextEncoder
from shared.schemas.inference import EmbedReply, EmbedTextsRequest
from shared.subjects import TEXT_EMBED
from shared.textnorm import normalize_text

REPO = Path(__file__).resolve().parent.parent

_OPENINGS = ["این گوشی", "کیفیت ساخت این محصول", "بسته‌بندی سفارش", "رنگ و طراحی", "باتری این مدل",
             "پشتیبانی فروشگاه", "قیمت این کالا", "صفحه نمایشش"]
_MIDDLES = ["واقعا عالی بود و", "نسبت به قیمتش خوبه ولی", "اصلا ارزش نداشت چون", "بعد از ۲ هفته استفاده",
            "از چیزی که فکر می‌کردم بهتره و", "برای استفاده روزمره مناسبه ولی"]
_ENDINGS = ["به همه پیشنهاد می‌کنم حتما بخرید", "زود خراب شد و پولم هدر رفت",
            "ارسالش هم سریع بود و راضی هستم", "کمی گرم می‌شه ولی قابل تحمله",
            "اگه دوباره بود باز هم می‌خریدم", "پیشنهاد نمی‌کنم مگر با تخفیف ۳۰ درصد"]


def make_texts(n: int) -> list[str]:
    """Distinct Persian reviews of roughly 20 to 30 tokens."""
    out = []
    for i in range(n):
        a, b, c = _OPENINGS[i % 8], _MIDDLES[(i // 8) % 6], _ENDINGS[(i // 48) % 6]
        out.append(f"{a} {b} {c} (سفارش {i})")
    return out


@dataclass
class Result:
    name: str
    texts: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)  # per round

    def add(self, texts: int, seconds: float, latencies_ms: list[float]) -> None:
        self.texts += texts
        self.seconds += seconds
        self.latencies_ms += latencies_ms
        self.rates.append(texts / seconds)

    @property
    def rate(self) -> float:
        """Median over rounds: robust to a neighbour's burst of load during one round."""
        return float(np.median(self.rates))

    def row(self) -> str:
        lat = np.array(self.latencies_ms)
        return (f"{self.name:<52} {self.rate:7.1f} texts/s   p50 {np.percentile(lat, 50):7.1f} ms"
                f"   p95 {np.percentile(lat, 95):7.1f} ms")


def bench_calls(result: Result, fn: Callable[[list[str]], object], texts: list[str], batch: int,
                budget_s: float) -> None:
    """Call ``fn`` on consecutive batches of ``texts`` for about ``budget_s``; latency is per call."""
    latencies = []
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < budget_s:
        i = done % (len(texts) - batch + 1)
        t0 = time.perf_counter()
        fn(texts[i : i + batch])
        latencies.append((time.perf_counter() - t0) * 1000)
        done += batch
    result.add(done, time.perf_counter() - start, latencies)


async def bench_service(result: Result, bus: Bus, texts: list[str], clients: int, budget_s: float) -> None:
    """``clients`` concurrent requesters, one text per request, for about ``budget_s``."""
    latencies: list[float] = []
    start = time.perf_counter()

    async def client(k: int) -> None:
        i = k
        while time.perf_counter() - start < budget_s:
            t0 = time.perf_counter()
            await bus.request(TEXT_EMBED, EmbedTextsRequest(texts=[texts[i % len(texts)]]), EmbedReply)
            latencies.append((time.perf_counter() - t0) * 1000)
            i += clients

    await asyncio.gather(*(client(k) for k in range(clients)))
    result.add(len(latencies), time.perf_counter() - start, latencies)


def run_service_round(loop: asyncio.AbstractEventLoop, result: Result, bus: Bus, texts: list[str],
                      clients: int, budget_s: float) -> None:
    loop.run_until_complete(bench_service(result, bus, texts, clients, budget_s))


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_service(
    nats_url: str, models_dir: Path, max_wait_ms: float, log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port = devstack.free_port()
    env = {**os.environ, "NATS_URL": nats_url, "KASHF_MODELS_DIR": str(models_dir),
           "KASHF_HEALTH_HOST": "127.0.0.1", "KASHF_HEALTH_PORT": str(port),
           "KASHF_TEXT_MAX_WAIT_MS": str(max_wait_ms), "KASHF_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "text_service"], cwd=REPO, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"text_service exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc, port
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("text_service not ready after 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default_models = Path(os.environ.get("KASHF_MODELS_DIR", REPO / "models"))
    parser.add_argument("--models-dir", type=Path, default=default_models)
    parser.add_argument("--model", default="text/multilingual-e5-small")
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--max-wait-ms", type=float, nargs="+", default=[4.0, 0.0],
                        help="one service per value; ratios use the first")
    parser.add_argument("--seconds", type=float, default=4.0, help="per configuration and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true", help="skip the sentence-transformers baseline")
    args = parser.parse_args()
    model_dir = args.models_dir / args.model
    texts = make_texts(args.texts)
    normalised = [normalize_text(t) for t in texts]
    print(f"{len(texts)} Persian texts, {os.cpu_count()} cores, model {model_dir}")

    encoder = TextEncoder(model_dir, device="auto")
    encoder.warmup()
    runs: dict[str, tuple[Result, Callable[[], None]]] = {}
    for batch in (1, 32):
        r = Result(f"ONNX in-process ({encoder.device}), batch {batch}")
        runs[f"onnx{batch}"] = (r, functools.partial(bench_calls, r, encoder.encode, normalised, batch,
                                                     args.seconds))

    # The model build keeps the sentence-transformers folder it exported from (manifest "reference").
    candidates = [model_dir / "reference" / "sentence-transformers", model_dir / "sentence-transformers"]
    st_dir = next((c for c in candidates if (c / "modules.json").is_file()), None)
    if not args.no_torch and st_dir is not None:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(st_dir), device="cpu", local_files_only=True)
        prefix = encoder.pre.prefix

        def st_encode(xs: list[str]) -> object:
            return st.encode([prefix + x for x in xs], batch_size=len(xs))

        st_encode(normalised[:32])
        for batch in (1, 32):
            r = Result(f"sentence-transformers (PyTorch CPU), batch {batch}")
            runs[f"torch{batch}"] = (r, functools.partial(bench_calls, r, st_encode, normalised, batch,
                                                          args.seconds))

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        buses: list[Bus] = []
        # One NATS server and one service process per max_wait value, so they never share a queue group.
        for n, wait_ms in enumerate(args.max_wait_ms):
            nats, nats_url = devstack.start_nats(Path(tmp) / f"nats{n}")
            stack.callback(stop_process, nats)
            service, _ = start_service(nats_url, args.models_dir, wait_ms, Path(tmp) / f"service{n}.log")
            stack.callback(stop_process, service)
            bus = loop.run_until_complete(Bus.connect(nats_url, "bench"))
            buses.append(bus)
            loop.run_until_complete(bus.request(TEXT_EMBED, EmbedTextsRequest(texts=texts[:32]), EmbedReply))
            suffix = "" if n == 0 else f"@{wait_ms:g}"
            for clients in (1, 32):
                r = Result(f"text_service NATS, {clients} client(s), wait {wait_ms:g} ms")
                runs[f"svc{clients}{suffix}"] = (r, functools.partial(
                    run_service_round, loop, r, bus, texts, clients, args.seconds))
        # Rounds interleave the configurations so background load hits them all alike.
        for round_ in range(args.rounds):
            for _, run in runs.values():
                run()
            print(f"round {round_ + 1}/{args.rounds} done (load {os.getloadavg()[0]:.1f})")
        for bus in buses:
            loop.run_until_complete(bus.close())
    results = {key: r for key, (r, _) in runs.items()}

    print(f"\n{len(texts)} texts, {args.rounds} rounds of {args.seconds:g} s, throughput = median of rounds")
    for r in results.values():
        print(r.row())
    print("\nratios (throughput; > 1 means the first is faster)")
    pairs = [("svc1", "onnx1"), ("svc32", "onnx32"), ("svc32", "svc1"), ("onnx32", "torch32"),
             ("svc32", "torch32"), ("onnx1", "torch1"), ("svc1", "torch1")]
    for a, b in pairs:
        if a in results and b in results:
            print(f"  {results[a].name}  /  {results[b].name}: {results[a].rate / results[b].rate:5.2f}")


if __name__ == "__main__":
    main()
