"""Text on a GPU: the fp16 model through onnxruntime-gpu, in-process over batch sizes, against the stack.

Baseline: the same fp16 model in this process on the CUDA execution provider, one ``session.run`` per batch
(batch sizes 1 to 256). The stack rows send ``POST /api/tag_texts/`` over HTTP (gateway -> Postgres -> NATS ->
text_service on the GPU -> head) from many clients, 1 or 32 texts per request, and are printed as a ratio to
the in-process batch that text_service's batcher can form (``KASHF_MAX_BATCH``, 256 here). An extra row calls
text_service over NATS directly. Needs a CUDA machine, onnxruntime-gpu and the fp16 file
(``make models-gpu``); ``bench/gpu_device.sh`` is the one-shot script that ran it on a lent GPU machine.
Run: ``python -m bench.gpu_text`` (about 3 min; ``--no-stack`` for the in-process sweep alone).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
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
    trained_head,
    wait_ready,
)
from bench.text import DATASET, in_process, make_texts, nats_call
from modelkit.onnx.text import TextEncoder
from shared.bus import Bus
from shared.textnorm import normalize_text

SERVICES = ("text_service", "trainer", "gateway")
METERED = ("gateway", "text_service")


def http_many(api: aiohttp.ClientSession, per_request: int) -> Callable[[list[str]], Awaitable[None]]:
    async def call(texts: list[str]) -> None:
        async with api.post("/api/tag_texts/", json={"dataset": DATASET, "contents": texts}) as r:
            body = await r.read()
            if r.status != 200:
                raise RequestFailed(f"HTTP {r.status} {body[:200].decode(errors='replace')}")

    return call


async def clients_run(call: Callable[[list[str]], Awaitable[None]], texts: list[str], clients: int,
                      per_request: int, seconds: float, failures: Counter[str]) -> list[Span]:
    async def step(c: int, k: int) -> int:
        i = ((c + k * clients) * per_request) % (len(texts) - per_request + 1)
        await call(texts[i : i + per_request])
        return per_request

    return await timed_clients(step, clients, seconds, failures)


def sweep(encoder: TextEncoder, texts: list[str], batches: list[int], seconds: float,
          rounds: int) -> dict[str, Result]:
    results = {f"gpu{b}": Result(f"(a) in-process fp16 {encoder.device}, batch {b}") for b in batches}
    for round_ in range(rounds):
        for key in rotated(list(results), round_):
            batch = int(key[3:])
            results[key].add(in_process(lambda xs: encoder.encode([normalize_text(x) for x in xs]),
                                        texts, batch, seconds), seconds)
    return results


async def stack_rounds(bs: BenchStack, texts: list[str], clients: list[int], per_request: list[int],
                       seconds: float, rounds: int) -> dict[str, Result]:
    async with bs.client() as api, bs.load_client(max(clients)) as load:
        head, tags = await trained_head(bs, api, DATASET, make_text_dataset)
        bus = await Bus.connect(bs.nats_url, "bench")
        try:
            r = await api.post("/api/tag_texts/", json={"dataset": DATASET, "contents": texts[:32]})
            assert r.status_code == 200 and {t["id"] for item in r.json() for t in item["tags"]} - {0}, r.text
            results: dict[str, Result] = {}
            runs: dict[str, Callable[[], Awaitable[list[Span]]]] = {}
            for c in clients:
                for k in per_request:
                    key = f"http{c}x{k}"
                    results[key] = Result(f"stack: HTTP, {c} clients x {k} text(s) per request")
                    runs[key] = (lambda c=c, k=k, key=key: clients_run(
                        http_many(load, k), texts, c, k, seconds, results[key].failures))
            top = max(clients)
            results["nats"] = Result(f"extra: text_service over NATS, {top} clients x 1 text")
            one = nats_call(bus, head, tags)
            runs["nats"] = lambda: clients_run(lambda xs: one(xs[0]), texts, top, 1, seconds,
                                               results["nats"].failures)
            meter = bs.meter(METERED)
            for round_ in range(rounds):
                for key in rotated(list(runs), round_):
                    await measure(meter, results[key], runs[key], seconds)
                print(f"stack round {round_ + 1}/{rounds} done ({load_note()})", flush=True)
            return results
        finally:
            await bus.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=models_dir())
    parser.add_argument("--model", default="text/multilingual-e5-small")
    parser.add_argument("--batches", default="1,8,32,64,128,256")
    parser.add_argument("--clients", default="32,256")
    parser.add_argument("--per-request", default="1,32")
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-stack", action="store_true")
    add_stack_args(parser)
    args = parser.parse_args()
    t0 = time.perf_counter()
    texts = make_texts(args.texts)
    batches = [int(b) for b in args.batches.split(",")]
    encoder = TextEncoder(args.models_dir / args.model, device="auto")
    print(f"{len(texts)} Persian texts; model file {encoder.manifest.file_for(encoder.device == 'cuda')} on "
          f"{encoder.device} ({encoder.session.get_providers()[0]}); {load_note()}", flush=True)
    encoder.encode(texts[:256])
    results = sweep(encoder, texts, batches, args.seconds, args.rounds)
    for r in results.values():
        print(r.row(), flush=True)
    if not args.no_stack:
        env = service_env(args, KASHF_DEVICE="cuda" if encoder.device == "cuda" else "cpu",
                          KASHF_MAX_BATCH=str(max(batches)), KASHF_MAX_QUEUE="8192")
        with tempfile.TemporaryDirectory(prefix="kashf-bench-gpu-") as tmp, \
                bench_stack(Path(tmp), SERVICES, env) as bs:
            wait_ready(bs)
            loop = asyncio.new_event_loop()
            try:
                results.update(loop.run_until_complete(stack_rounds(
                    bs, texts, [int(c) for c in args.clients.split(",")],
                    [int(k) for k in args.per_request.split(",")], args.seconds, args.rounds)))
            finally:
                loop.close()
    print(f"\n{args.rounds} round(s) of {args.seconds:g} s per configuration; throughput = median of rounds")
    for r in results.values():
        print(r.row())
    for r in results.values():
        if (line := r.cpu_row()) is not None:
            print(line)
    print_failures(results)
    print("\nratios (throughput; > 1 means the first is faster)")
    for b in batches[1:]:
        print_ratio(results, f"gpu{b}", f"gpu{batches[0]}")
    best = f"gpu{max(batches)}"
    for key in [k for k in results if k.startswith(("http", "nats"))]:
        print_ratio(results, key, best)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; {load_note()}")


if __name__ == "__main__":
    main()
