"""Text tagging throughput and latency through the whole stack, against named in-process baselines.

Stack: ``POST /api/tag_texts/`` over HTTP (gateway -> Postgres -> NATS -> text_service -> head) with a
real token and a trained dataset, one text per request, 1 and 32 concurrent clients. Baselines, in the
same run and interleaved round by round: (a) the same ONNX model in this process, batch 1 and 32;
(b) the same weights in sentence-transformers on PyTorch. An extra row sends the gateway's own
TEXT_TAG request straight to text_service over NATS, to tell HTTP + database cost from NATS + batcher.
The HTTP load comes from aiohttp, the lightest client measured (``BenchStack.load_client``).
Run: ``python -m bench.text`` (about 2 min; ``--quick`` about 40 s; needs ``make models``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp

from bench._stack import (
    BenchStack,
    RequestFailed,
    Result,
    Span,
    add_stack_args,
    bench_stack,
    load_note,
    make_text_dataset,
    measure,
    models_dir,
    print_failures,
    print_ratio,
    rotated,
    service_env,
    timed_clients,
    timed_loop,
    trained_head,
    verdict,
    wait_ready,
)
from modelkit.onnx.layout import model_layout
from modelkit.onnx.text import TextEncoder
from shared.bus import Bus
from shared.errors import KashfError
from shared.schemas.inference import HeadRef, TagRef, TagReply, TagTextsRequest
from shared.subjects import TEXT_TAG
from shared.textnorm import normalize_text

DATASET = "bench-reviews"
SERVICES = ("text_service", "trainer", "gateway")
METERED = ("gateway", "text_service")

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


def in_process(fn: Callable[[list[str]], object], texts: list[str], batch: int, budget_s: float) -> list[Span]:
    """Call ``fn`` on consecutive batches of ``texts`` for about ``budget_s``."""

    def step(k: int) -> int:
        i = (k * batch) % (len(texts) - batch + 1)
        fn(texts[i : i + batch])
        return batch

    return timed_loop(step, budget_s)


def in_process_parallel(fn: Callable[[list[str]], object], texts: list[str], batch: int, budget_s: float,
                        workers: int) -> list[Span]:
    """``workers`` threads each calling ``fn`` as ``in_process`` does, all at once."""
    with ThreadPoolExecutor(workers) as pool:
        runs = [pool.submit(in_process, fn, texts[w * 7 :] + texts[: w * 7], batch, budget_s) for w in range(workers)]
        return [span for run in runs for span in run.result()]


async def one_text_clients(call: Callable[[str], Awaitable[None]], texts: list[str], clients: int,
                           budget_s: float, failures: Counter[str] | None = None) -> list[Span]:
    """``clients`` concurrent requesters, one text per request, for about ``budget_s``."""

    async def step(c: int, k: int) -> int:
        await call(texts[(c + k * clients) % len(texts)])
        return 1

    return await timed_clients(step, clients, budget_s, failures)


def http_call(api: aiohttp.ClientSession) -> Callable[[str], Awaitable[None]]:
    async def call(text: str) -> None:
        async with api.post("/api/tag_texts/", json={"dataset": DATASET, "contents": [text]}) as r:
            body = await r.read()
            if r.status != 200:
                raise RequestFailed(f"HTTP {r.status} {body[:200].decode(errors='replace')}")

    return call


def nats_call(bus: Bus, head: HeadRef, tags: list[TagRef]) -> Callable[[str], Awaitable[None]]:
    async def call(text: str) -> None:
        try:
            await bus.request(TEXT_TAG, TagTextsRequest(head=head, tags=tags, texts=[text]), TagReply)
        except KashfError as exc:
            raise RequestFailed(f"{exc.status} {exc.error_code}: {exc}") from exc

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=models_dir())
    parser.add_argument("--model", default="text/multilingual-e5-small")
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0, help="per configuration and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s per configuration")
    parser.add_argument("--no-torch", action="store_true", help="skip the sentence-transformers baseline")
    add_stack_args(parser)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 2.0, 1
    t_start = time.perf_counter()
    model_dir = args.models_dir / args.model
    texts = make_texts(args.texts)
    print(f"{len(texts)} Persian texts, model {model_dir}; {load_note()}")

    with tempfile.TemporaryDirectory(prefix="kashf-bench-text-") as tmp, \
            bench_stack(Path(tmp), SERVICES, service_env(args)) as bs:
        # The services boot while this process loads its baselines.
        encoder = TextEncoder(model_dir, device="auto")
        encoder.warmup()

        def onnx_encode(xs: list[str]) -> object:
            return encoder.encode([normalize_text(x) for x in xs])

        fns: dict[str, tuple[str, Callable[[list[str]], object], int, int]] = {
            f"onnx{b}": (f"(a) ONNX in-process ({encoder.device}), batch {b}", onnx_encode, b, 1) for b in (1, 32)
        }
        # Not a target's baseline: the same model laid out as text_service lays it out by default
        # (several calls at once, few threads each), to show that ceiling beside the naive call.
        layout = model_layout(encoder.device)
        if layout.workers > 1:
            laid_out = TextEncoder(model_dir, device="auto", threads=layout.threads)
            laid_out.warmup()

            def layout_encode(xs: list[str]) -> object:
                return laid_out.encode([normalize_text(x) for x in xs])

            fns["onnx32x"] = (f"extra: ONNX in-process, {layout.workers} calls at once x {layout.threads} "
                              "thread(s), batch 32", layout_encode, 32, layout.workers)
        # The model build keeps the sentence-transformers folder it exported from.
        candidates = [model_dir / "reference" / "sentence-transformers", model_dir / "sentence-transformers"]
        st_dir = next((c for c in candidates if (c / "modules.json").is_file()), None)
        if not args.no_torch and st_dir is not None:
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(str(st_dir), device="cpu", local_files_only=True)
            prefix = encoder.pre.prefix

            def st_encode(xs: list[str]) -> object:
                return st.encode([prefix + normalize_text(x) for x in xs], batch_size=len(xs))

            st_encode(texts[:32])
            fns.update({f"torch{b}": (f"(b) sentence-transformers (PyTorch CPU), batch {b}", st_encode, b, 1)
                        for b in (1, 32)})
        wait_ready(bs)
        loop = asyncio.new_event_loop()
        try:
            results = loop.run_until_complete(
                run_rounds(bs, fns, texts, args.seconds, args.rounds))
        finally:
            loop.close()
    report(results, args, time.perf_counter() - t_start)


async def run_rounds(bs: BenchStack, fns: dict[str, tuple[str, Callable[[list[str]], object], int, int]],
                     texts: list[str], seconds: float, rounds: int) -> dict[str, Result]:
    async with bs.client() as api, bs.load_client() as load:
        head, tags = await trained_head(bs, api, DATASET, make_text_dataset)
        bus = await Bus.connect(bs.nats_url, "bench")
        try:
            # Warm both paths, and check the answer names a trained tag, not only the unknown one.
            r = await api.post("/api/tag_texts/", json={"dataset": DATASET, "contents": texts[:32]})
            found = {t["id"] for item in r.json() for t in item["tags"]}
            assert r.status_code == 200 and found - {0}, r.text[:500]
            await bus.request(TEXT_TAG, TagTextsRequest(head=head, tags=tags, texts=texts[:32]), TagReply)

            results: dict[str, Result] = {}
            runs: dict[str, Callable[[], Awaitable[list[Span]]]] = {}
            for key, (name, fn, batch, workers) in fns.items():
                results[key] = Result(name)
                runs[key] = _sync_run(fn, texts, batch, seconds, workers)
            for clients in (1, 32):
                results[f"http{clients}"] = Result(f"stack: HTTP /api/tag_texts/, {clients} client(s) x 1 text")
                runs[f"http{clients}"] = _client_run(http_call(load), texts, clients, seconds,
                                                     results[f"http{clients}"].failures)
                results[f"nats{clients}"] = Result(f"extra: text_service NATS TEXT_TAG, {clients} client(s)")
                runs[f"nats{clients}"] = _client_run(nats_call(bus, head, tags), texts, clients, seconds,
                                                     results[f"nats{clients}"].failures)
            meter = bs.meter(METERED)
            for round_ in range(rounds):
                for key in rotated(list(runs), round_):
                    await measure(meter, results[key], runs[key], seconds)
                print(f"round {round_ + 1}/{rounds} done ({load_note()})")
            return results
        finally:
            await bus.close()


def _sync_run(fn: Callable[[list[str]], object], texts: list[str], batch: int,
              seconds: float, workers: int = 1) -> Callable[[], Awaitable[list[Span]]]:
    async def run() -> list[Span]:
        # In a thread so the event loop (NATS pings) stays responsive; nothing else runs meanwhile.
        if workers > 1:
            return await asyncio.to_thread(in_process_parallel, fn, texts, batch, seconds, workers)
        return await asyncio.to_thread(in_process, fn, texts, batch, seconds)

    return run


def _client_run(call: Callable[[str], Awaitable[None]], texts: list[str], clients: int, seconds: float,
                failures: Counter[str]) -> Callable[[], Awaitable[list[Span]]]:
    async def run() -> list[Span]:
        return await one_text_clients(call, texts, clients, seconds, failures)

    return run


def report(results: dict[str, Result], args: argparse.Namespace, elapsed: float) -> None:
    print(f"\n{args.rounds} round(s) of {args.seconds:g} s per configuration, interleaved; "
          f"throughput = median of rounds; latency per request (per call for in-process)")
    for r in results.values():
        print(r.row())
    print("\nCPU ms per text, per process (client = this process: the in-process model, or the HTTP/NATS client)")
    for r in results.values():
        if (line := r.cpu_row()) is not None:
            print(line)
    failed = print_failures(results)
    print("\nratios (throughput; > 1 means the first is faster)")
    stack32 = print_ratio(results, "http32", "onnx32")
    vs_torch = print_ratio(results, "http32", "torch32")
    print_ratio(results, "http1", "onnx1")
    print_ratio(results, "nats32", "onnx32")
    print_ratio(results, "http32", "nats32")
    print_ratio(results, "http32", "onnx32x")
    print_ratio(results, "onnx32", "torch32")
    print("\ntargets")
    verdict("stack at 32 clients >= 0.8 x in-process ONNX batch 32", None if stack32 is None else stack32 >= 0.8,
            f"{stack32:.2f}" if stack32 is not None else "not measured")
    verdict("stack at 32 clients >= 1.6 x sentence-transformers PyTorch batch 32",
            None if vs_torch is None else vs_torch >= 1.6,
            f"{vs_torch:.2f}" if vs_torch is not None else "not measured (--no-torch or no reference model)")
    gap = results["http1"].p(50) - results["onnx1"].p(50)
    verdict("single-text p50 within 15 ms of in-process ONNX batch 1", gap <= 15.0,
            f"{results['http1'].p(50):.1f} ms vs {results['onnx1'].p(50):.1f} ms ({gap:+.1f} ms)")
    verdict("no request refused", not failed, "none" if not failed else "see FAILED above")
    print(f"\ntotal {elapsed:.0f} s; {load_note()}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
