"""What the product benchmarks share: the whole stack on a private NATS and a fresh database, a token,
a trained dataset, a loopback file server, per-process CPU accounting and the result table.

The stack itself is ``devtools.stack.Stack``; this module only adds the benchmark's setup around it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx
import numpy as np

from devtools import servers
from devtools.stack import Stack, create_token
from shared.db.migrate import upgrade
from shared.schemas.inference import HeadRef, TagRef
from tests.fileserver import file_server

REPO = Path(__file__).resolve().parent.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def models_dir() -> Path:
    return Path(os.environ.get("KASHF_MODELS_DIR", REPO / "models"))


def add_stack_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for every service, e.g. KASHF_THREADS=1 (repeatable)")


def service_env(args: argparse.Namespace, **defaults: str) -> dict[str, str]:
    pairs = dict(item.split("=", 1) for item in args.service_env)
    if pairs:
        print(f"service environment: {pairs}")
    return {**defaults, **pairs}


# Results


Span = tuple[float, float, int]  # one request or call: start and end (s, from the run's start), items


@dataclass
class Result:
    """One configuration over several rounds: throughput is the median of the rounds' rates.

    A round's rate is the work done inside its window: a request that straddles the window's end
    counts for the part of it inside, so long requests (32 images) are not penalised by the tail.
    """

    name: str
    unit: str = "texts"
    items: int = 0
    requests: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds over all rounds
    failures: Counter[str] = field(default_factory=Counter)  # refused requests by reason

    def add(self, spans: Sequence[Span], window_s: float | None, cpu_s: Mapping[str, float] | None = None) -> None:
        """``window_s`` None: the window ends with the last span (one video per round)."""
        window_s = window_s or max(t1 for _, t1, _ in spans)
        inside = sum(n * max(0.0, min(t1, window_s) - t0) / max(t1 - t0, 1e-9) for t0, t1, n in spans)
        self.rates.append(inside / window_s)
        self.items += sum(n for _, _, n in spans)  # all of them used the CPU measured for the round
        self.requests += len(spans)
        self.latencies_ms += [(t1 - t0) * 1000 for t0, t1, _ in spans]
        for name, value in (cpu_s or {}).items():
            self.cpu_s[name] = self.cpu_s.get(name, 0.0) + value

    @property
    def rate(self) -> float:
        # The median is robust to a neighbour's burst of load during one round.
        return float(np.median(self.rates)) if self.rates else float("nan")

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def row(self, width: int = 58) -> str:
        failed = f"   FAILED {sum(self.failures.values())}" if self.failures else ""
        return (f"{self.name:<{width}} {self.rate:8.1f} {self.unit}/s   p50 {self.p(50):8.1f} ms"
                f"   p95 {self.p(95):8.1f} ms   n={self.items}{failed}")

    def cpu_row(self, width: int = 58) -> str | None:
        """CPU milliseconds per item, per process: where the time of a request goes."""
        if not self.cpu_s or not self.items:
            return None
        parts = [f"{name} {1000 * s / self.items:6.2f}" for name, s in self.cpu_s.items()]
        total = 1000 * sum(self.cpu_s.values()) / self.items
        return f"{self.name:<{width}} " + "  ".join(parts) + f"  | total {total:6.2f}"


class RequestFailed(Exception):
    """A request the stack refused: counted and shown, the run goes on."""


def print_failures(results: Mapping[str, Result]) -> bool:
    """Print every refused request by reason; True when there were any."""
    any_failed = False
    for r in results.values():
        for reason, n in r.failures.most_common():
            print(f"  FAILED {n}x in {r.name}: {reason}")
            any_failed = True
    return any_failed


def print_ratio(results: Mapping[str, Result], a: str, b: str) -> float | None:
    if a not in results or b not in results:
        return None
    ratio = results[a].rate / results[b].rate
    print(f"  {results[a].name}  /  {results[b].name}: {ratio:5.2f}")
    return ratio


def verdict(label: str, ok: bool | None, detail: str) -> None:
    state = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
    print(f"  [{state}] {label}: {detail}")


def rotated(keys: Sequence[str], round_: int) -> list[str]:
    """The round's order: rotated each round, so no configuration always follows the same one."""
    k = round_ % len(keys) if keys else 0
    return [*keys[k:], *keys[:k]]


def load_note() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


# Timed runs: every call's span, so the window rule above can be applied.


def timed_loop(step: Callable[[int], int], budget_s: float) -> list[Span]:
    """``step(0)``, ``step(1)``, ... one after another until ``budget_s`` has passed; step returns its items."""
    spans: list[Span] = []
    start = time.perf_counter()
    k = 0
    while (t0 := time.perf_counter() - start) < budget_s:
        n = step(k)
        spans.append((t0, time.perf_counter() - start, n))
        k += 1
    return spans


async def timed_clients(step: Callable[[int, int], Awaitable[int]], clients: int, budget_s: float,
                        failures: Counter[str] | None = None) -> list[Span]:
    """``clients`` concurrent loops of ``step(client, k)`` until ``budget_s`` has passed.

    A step raising RequestFailed is counted in ``failures`` (if given, else re-raised) and done no work.
    """
    spans: list[Span] = []
    start = time.perf_counter()

    async def client(c: int) -> None:
        k = 0
        while (t0 := time.perf_counter() - start) < budget_s:
            try:
                n = await step(c, k)
            except RequestFailed as exc:
                if failures is None:
                    raise
                failures[str(exc)] += 1
                n = 0
            spans.append((t0, time.perf_counter() - start, n))
            k += 1

    await asyncio.gather(*(client(c) for c in range(clients)))
    return spans


async def measure(meter: CpuMeter, result: Result, run: Callable[[], Awaitable[list[Span]]],
                  window_s: float | None) -> None:
    """One round of one configuration, with the CPU every process spent on it."""
    await asyncio.to_thread(meter.start)
    spans = await run()
    result.add(spans, window_s, await asyncio.to_thread(meter.stop))


# CPU accounting from /proc (Linux): user + system time of whole processes, all threads.


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


class CpuMeter:
    """CPU seconds spent by named processes between ``start()`` and ``stop()``.

    ``groups`` maps a name to a callable giving its pids now (Postgres backends come and go).
    """

    def __init__(self, groups: Mapping[str, Callable[[], Sequence[int]]]) -> None:
        self.groups = groups
        self._start: dict[str, dict[int, float]] = {}

    def _sample(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for name, pids in self.groups.items():
            out[name] = {pid: s for pid in pids() if (s := cpu_seconds(pid)) is not None}
        return out

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> dict[str, float]:
        end = self._sample()
        return {name: sum(s - self._start.get(name, {}).get(pid, 0.0) for pid, s in now.items())
                for name, now in end.items()}


# Loopback file server for URL inputs (the stack runs with FETCH_ALLOW_HOSTS=127.0.0.1).


@contextlib.contextmanager
def serve_files(bodies: Sequence[bytes], content_type: str, suffix: str) -> Iterator[Callable[[int], str]]:
    """Serve ``bodies[i]`` at ``/<i><suffix>`` on 127.0.0.1; yields i -> URL."""
    files = {f"/{i}{suffix}": (content_type, body) for i, body in enumerate(bodies)}
    with file_server(files) as server:
        yield lambda i: server.url(f"/{i}{suffix}")


# The stack


@dataclass
class BenchStack:
    stack: Stack
    token: str
    nats_url: str
    database_url: str
    db_plain_url: str  # the same database as a plain libpq URL, for asyncpg
    database: str
    nats_pid: int

    @property
    def url(self) -> str:
        return self.stack.url

    def load_client(self, connections: int = 64) -> aiohttp.ClientSession:
        """The timed requests' client. The load generator shares the machine's cores with the stack, so
        it must be light: measured in bench/text.py, httpx spent 4.9 ms of CPU per request, aiohttp 0.4 ms."""
        return aiohttp.ClientSession(
            base_url=self.stack.url, headers={"Authorization": f"Token {self.token}"},
            connector=aiohttp.TCPConnector(limit=connections), timeout=aiohttp.ClientTimeout(total=300.0),
        )

    def client(self, connections: int = 64) -> httpx.AsyncClient:
        """Set-up calls (datasets, reports, training); timed load goes through ``load_client``."""
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(base_url=self.stack.url, headers={"Authorization": f"Token {self.token}"},
                                 timeout=300.0, limits=limits)

    def pid(self, name: str) -> int:
        return self.stack.procs[name].popen.pid

    def postgres_pids(self) -> list[int]:
        """Backends serving our database now; empty when the server is not on this machine."""
        async def query() -> list[int]:
            conn = await asyncpg.connect(self.db_plain_url, timeout=5)
            try:
                rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1"
                                        " AND pid <> pg_backend_pid()", self.database)
            finally:
                await conn.close()
            return [int(r["pid"]) for r in rows]

        # A thread with its own loop: callers may be inside a running event loop.
        box: list[list[int]] = []
        thread = threading.Thread(target=lambda: box.append(asyncio.run(query())))
        thread.start()
        thread.join()
        return [p for p in (box[0] if box else []) if Path(f"/proc/{p}").exists()]

    def meter(self, services: Sequence[str], client: bool = True) -> CpuMeter:
        """CPU of the named services, nats-server, our Postgres backends and (client) this process."""
        groups: dict[str, Callable[[], Sequence[int]]] = {}
        if client:
            groups["client"] = lambda: [os.getpid()]
        for name in services:
            groups[name] = self._pids_of(name)
        groups["nats"] = lambda: [self.nats_pid]
        groups["postgres"] = self.postgres_pids
        return CpuMeter(groups)

    def _pids_of(self, name: str) -> Callable[[], list[int]]:
        return lambda: [self.pid(name)]

    def log_tails(self, chars: int = 3000) -> str:
        log_dir = self.stack.log_dir
        if log_dir is None:
            return ""
        return "\n".join(f"==== {p.name}\n{p.read_text(errors='replace')[-chars:]}"
                         for p in sorted(log_dir.glob("*.log")))


@contextlib.contextmanager
def bench_stack(work: Path, services: Sequence[str], env: Mapping[str, str] | None = None,
                ) -> Iterator[BenchStack]:
    """Start NATS, a fresh migrated database and ``services``; yields at once (call ``wait_ready``).

    The benchmark can load its in-process baseline while the services boot. Everything started here
    is stopped, and the database dropped, on exit.
    """
    nats_proc, nats_url = servers.start_nats(work / "nats")
    server_url = ""
    database = f"kashf_bench_{uuid.uuid4().hex[:10]}"
    stack: Stack | None = None
    handle: Any = None
    try:
        server_url, handle = servers.postgres_server(work / "postgres")
        database_url = asyncio.run(servers.create_database(server_url, database))
        upgrade(database_url)
        token = create_token(database_url, "bench")
        stack = Stack(
            database_url, nats_url, gateway_port=servers.free_port(), services=tuple(services),
            log_dir=work / "logs", echo=False,
            env={
                "KASHF_MODELS_DIR": str(models_dir()),
                "KASHF_LOG_LEVEL": "WARNING",
                "KASHF_ENVIRONMENT": "test",
                "KASHF_RATE_PER_MINUTE": "0",  # the bench is one account sending as fast as it can
                "KASHF_TRAIN_DEBOUNCE_S": "0.3",
                "FETCH_ALLOW_HOSTS": "127.0.0.1",
                **(env or {}),
            },
        )
        stack.start_all()
        yield BenchStack(stack, token, nats_url, database_url, servers.with_database(server_url, database),
                         database, nats_proc.pid)
    finally:
        if stack is not None:
            stack.stop_all()
        nats_proc.terminate()
        try:
            nats_proc.wait(10)
        except Exception:
            nats_proc.kill()
        if server_url:
            with contextlib.suppress(Exception):
                asyncio.run(servers.drop_database(server_url, database))
        if handle is not None:  # an embedded Postgres, started only when the machine has none
            with contextlib.suppress(Exception):
                handle.cleanup()


def wait_ready(bs: BenchStack, timeout_s: float = 240.0) -> None:
    t0 = time.perf_counter()
    try:
        bs.stack.wait_ready(timeout_s=timeout_s)
    except Exception:
        print(bs.log_tails())
        raise
    print(f"stack ready ({', '.join(bs.stack.procs)}) {time.perf_counter() - t0:.1f} s after the wait began")


# Datasets through the API


async def _ok(response: httpx.Response) -> Any:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.method} {response.request.url.path}: "
                           f"{response.status_code} {response.text[:500]}")
    return response.json()


async def wait_trained(api: httpx.AsyncClient, dataset: str, timeout_s: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        info = await _ok(await api.post("/api/dataset_info/", json={"dataset": dataset, "tags": True}))
        if info["state"] == "trained":
            return info
        if info["state"] == "failed":
            raise RuntimeError(f"training {dataset} failed: {info}")
        await asyncio.sleep(0.3)
    raise TimeoutError(f"dataset {dataset} not trained after {timeout_s:g} s: {info}")


async def create_tags(api: httpx.AsyncClient, dataset: str, kind: str, titles: Sequence[str]) -> dict[str, int]:
    await _ok(await api.post("/api/create_dataset/", json={"dataset": dataset, "title": dataset, "kind": kind}))
    ids = {}
    for title in titles:
        ids[title] = (await _ok(await api.post("/api/create_tag/", json={"dataset": dataset, "title": title})))[
            "tag_id"]
    return ids


async def train(api: httpx.AsyncClient, dataset: str) -> dict[str, Any]:
    await _ok(await api.post("/api/train_dataset/", json={"dataset": dataset}))
    return await wait_trained(api, dataset)


async def make_text_dataset(api: httpx.AsyncClient, dataset: str) -> dict[str, Any]:
    """Three tags of Persian and English reviews (the integration tests' examples), trained."""
    from tests.integration.texts import TRAIN

    ids = await create_tags(api, dataset, "text", list(TRAIN))
    reports = [{"content": t, "tag_id": ids[title], "positive": True} for title, ts in TRAIN.items() for t in ts]
    await _ok(await api.post("/api/report_text_tags/", json=reports))
    return await train(api, dataset)


async def make_image_dataset(api: httpx.AsyncClient, dataset: str, per_tag: int = 4) -> dict[str, Any]:
    """Four tags (cat, coffee, rocket, astronaut) from crops of real photos reported by URL, trained."""
    from tests.integration.media import jpeg, photos, variant

    ids = await create_tags(api, dataset, "image", list(photos()))
    shots = [(name, jpeg(variant(photo, k))) for name, photo in photos().items() for k in range(per_tag)]
    with serve_files([b for _, b in shots], "image/jpeg", ".jpg") as url_of:
        reports = [{"image_url": url_of(i), "tag_id": ids[name], "positive": True}
                   for i, (name, _) in enumerate(shots)]
        await _ok(await api.post("/api/report_image_tags/", json=reports))
        return await train(api, dataset)


async def trained_head(bs: BenchStack, api: httpx.AsyncClient, dataset: str,
                       make: Callable[[httpx.AsyncClient, str], Awaitable[dict[str, Any]]],
                       ) -> tuple[HeadRef, list[TagRef]]:
    """Make and train ``dataset`` through the API with ``make``; its head and active tags as the gateway sends them."""
    t0 = time.perf_counter()
    info = await make(api, dataset)
    print(f"dataset trained in {time.perf_counter() - t0:.1f} s: {info['report_count']} reports, "
          f"evaluation {info['evaluation']}")
    conn = await asyncpg.connect(bs.db_plain_url, timeout=5)
    try:
        row = await conn.fetchrow("SELECT id, head_version FROM dataset WHERE name = $1", dataset)
        assert row is not None
        tags = await conn.fetch("SELECT id, title FROM tag WHERE dataset_id = $1 AND active ORDER BY id", row["id"])
    finally:
        await conn.close()
    return (HeadRef(dataset_id=int(row["id"]), version=row["head_version"]),
            [TagRef(id=int(t["id"]), title=str(t["title"])) for t in tags])
