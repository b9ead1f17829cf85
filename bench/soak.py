"""Soak: mixed traffic on a stack for minutes, with every Kashf process's resident memory sampled.

    python -m bench.soak --start --minutes 10            # a stack of its own (private NATS, fresh database)
    python -m bench.soak --url http://127.0.0.1:8000 --token KEY --minutes 10   # a running `make up`

Traffic: tag_texts (new texts each call), tag_images by upload, report_text_tags and report_image_tags (by
upload) of new items, and a train_dataset of each dataset every ``--train-every-s``; paced to ``--rps``
requests a second (under the account's default rate limit of 600 a minute). Every ``--sample-s`` the RSS of
each process (psutil if installed, else /proc) is read. At the end: RSS at start, max and end per process and
the growth slope over the second half (MiB a minute, least squares), when the warm-up (model arenas, caches
filling) is over. Exit 1 when a process's slope passes ``--max-slope`` or it grew more than
``--max-growth-mib`` over the second half, when a process exited or was restarted, or when a request got a
500. Not part of ``make test`` (it runs for minutes).

Attached to a running stack, the processes are found from the gateway's port: the process listening on it,
and its siblings (children of the same ``devtools.stack`` parent: the services and the embedded nats-server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from devtools.stack import SERVICES
from tests.integration.media import jpeg, photos, variant
from tests.integration.texts import TRAIN

try:
    import psutil
except ImportError:  # the /proc fallback below
    psutil = None

MIB = 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE")


# Processes and their memory


def rss_bytes(pid: int) -> int | None:
    if psutil is not None:
        try:
            return int(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            return None
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def process_name(pid: int) -> str | None:
    """The Kashf service a process runs (``python -m <service>``), or ``nats-server``; None for others."""
    argv = _cmdline(pid)
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m" and argv[i + 1] in SERVICES:
            return argv[i + 1]
    if argv and Path(argv[0]).name == "nats-server":
        return "nats-server"
    return None


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as f:
            for line in list(f)[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(cols[9])
    return inodes


def listening_pid(port: int) -> int | None:
    """The gateway process holding a listening socket on ``port`` (from /proc: no privileges needed)."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    for pid in _pids():
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted and process_name(pid) == "gateway":
                        return pid
    return None


def stack_processes(gateway_port: int) -> dict[str, int]:
    """name -> pid of the stack whose gateway listens on ``gateway_port``: the gateway and its siblings."""
    gateway = listening_pid(gateway_port)
    if gateway is None:
        return {}
    parent = _ppid(gateway)
    found = {"gateway": gateway}
    for pid in _pids():
        if pid != gateway and _ppid(pid) == parent and (name := process_name(pid)) is not None:
            found.setdefault(name, pid)
    return found


@dataclass
class Series:
    """One process's samples: (seconds from the start, MiB); pids seen (more than one: it was restarted)."""

    points: list[tuple[float, float]] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    def second_half(self, duration_s: float) -> list[tuple[float, float]]:
        return [(t, m) for t, m in self.points if t >= duration_s / 2]

    def slope(self, duration_s: float) -> float:
        """MiB a minute over the second half, least squares."""
        half = self.second_half(duration_s)
        if len(half) < 3:
            return float("nan")
        t, m = np.array(half).T
        return float(np.polyfit(t / 60.0, m, 1)[0])

    def half_growth(self, duration_s: float) -> float:
        half = self.second_half(duration_s)
        return half[-1][1] - half[0][1] if half else float("nan")


class Sampler:
    def __init__(self, find: Any, every_s: float) -> None:
        self.find, self.every_s = find, every_s
        self.series: dict[str, Series] = defaultdict(Series)
        self.exited: set[str] = set()

    def sample(self, t: float) -> None:
        for name, pid in self.find().items():
            rss = rss_bytes(pid)
            if rss is None:
                continue
            s = self.series[name]
            if not s.pids or s.pids[-1] != pid:
                s.pids.append(pid)
            s.points.append((t, rss / MIB))
        for name in self.series:
            if name not in self.find():
                self.exited.add(name)

    async def run(self, start: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.sample, time.monotonic() - start)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)
        await asyncio.to_thread(self.sample, time.monotonic() - start)


# Traffic

WORDS = [w for texts in TRAIN.values() for t in texts for w in t.split()]


def new_text(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(4, 24)))


@dataclass
class Traffic:
    api: httpx.AsyncClient
    rng: random.Random
    text_tags: list[int]
    image_tags: list[int]
    images: list[tuple[str, bytes]]
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    server_errors: list[str] = field(default_factory=list)

    async def post(self, op: str, path: str, **kwargs: Any) -> None:
        t0 = time.perf_counter()
        try:
            r = await self.api.post(path, **kwargs)
        except httpx.HTTPError as exc:
            self.statuses[(op, 0)] += 1
            self.server_errors.append(f"{op}: {type(exc).__name__}")
            return
        self.latencies[op].append(time.perf_counter() - t0)
        self.statuses[(op, r.status_code)] += 1
        if r.status_code >= 500 and r.status_code not in (503, 504):
            self.server_errors.append(f"{op}: {r.status_code} {r.text[:200]}")

    def upload(self, k: int) -> list[tuple[str, tuple[str, bytes, str]]]:
        name, body = self.images[k % len(self.images)]
        return [("image_file", (name, body, "image/jpeg"))]

    async def one(self) -> None:
        rng = self.rng
        op = rng.choices(["tag_texts", "tag_images", "report_text", "report_image"], weights=[45, 25, 20, 10])[0]
        if op == "tag_texts":
            contents = [new_text(rng) for _ in range(rng.randint(1, 8))]
            await self.post(op, "/api/tag_texts/", json={"dataset": "soak-text", "contents": contents})
        elif op == "tag_images":
            await self.post(op, "/api/tag_images/", data={"dataset": "soak-image"},
                            files=self.upload(rng.randrange(len(self.images))))
        elif op == "report_text":
            body = [{"content": new_text(rng), "tag_id": rng.choice(self.text_tags), "positive": rng.random() < 0.8}]
            await self.post(op, "/api/report_text_tags/", json=body)
        else:
            await self.post(op, "/api/report_image_tags/",
                            data={"tag_id": str(rng.choice(self.image_tags)), "positive": "true"},
                            files=self.upload(rng.randrange(len(self.images))))

    async def trains(self, every_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            for dataset in ("soak-text", "soak-image"):
                await self.post("train", "/api/train_dataset/", json={"dataset": dataset})


async def paced(traffic: Traffic, rps: float, clients: int, stop: asyncio.Event) -> None:
    """``clients`` loops sharing one schedule of ``rps`` request starts a second."""
    next_at = time.monotonic()

    async def client() -> None:
        nonlocal next_at
        while not stop.is_set():
            at = next_at = max(next_at + 1.0 / rps, time.monotonic() - 1.0)
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            if not stop.is_set():
                await traffic.one()

    await asyncio.gather(*(client() for _ in range(clients)))


async def _ok(r: httpx.Response) -> Any:
    if r.status_code != 200:
        raise RuntimeError(f"{r.request.url.path}: {r.status_code} {r.text[:300]}")
    return r.json()


async def setup(api: httpx.AsyncClient, images: list[tuple[str, bytes]]) -> tuple[list[int], list[int]]:
    """The two datasets (made once; a rerun on the same account reuses them), trained."""
    tags: dict[str, list[int]] = {}
    for dataset, kind, titles in (("soak-text", "text", list(TRAIN)), ("soak-image", "image", list(photos()))):
        r = await api.post("/api/create_dataset/", json={"dataset": dataset, "title": dataset, "kind": kind})
        if not (r.status_code == 400 and r.json().get("error") == "dataset_exists"):
            await _ok(r)
        info = await _ok(await api.post("/api/dataset_info/", json={"dataset": dataset, "tags": True}))
        have = {t["title"]: t["id"] for t in info.get("tags", [])}
        for title in titles:
            if title not in have:
                have[title] = (await _ok(await api.post("/api/create_tag/",
                                                        json={"dataset": dataset, "title": title})))["tag_id"]
        tags[dataset] = [have[t] for t in titles]
    text_tags = dict(zip(TRAIN, tags["soak-text"], strict=True))
    await _ok(await api.post("/api/report_text_tags/", json=[
        {"content": t, "tag_id": text_tags[title], "positive": True} for title, ts in TRAIN.items() for t in ts]))
    image_tags = dict(zip(photos(), tags["soak-image"], strict=True))
    for name, body in images[: 4 * len(image_tags)]:
        await _ok(await api.post("/api/report_image_tags/", data={"tag_id": str(image_tags[name.split("-")[0]])},
                                 files=[("image_file", (name, body, "image/jpeg"))]))
    for dataset in tags:
        await _ok(await api.post("/api/train_dataset/", json={"dataset": dataset}))
    deadline = time.monotonic() + 600
    for dataset in tags:
        while True:
            info = await _ok(await api.post("/api/dataset_info/", json={"dataset": dataset}))
            if info["state"] == "trained":
                break
            if info["state"] == "failed" or time.monotonic() > deadline:
                raise RuntimeError(f"{dataset} not trained: {info}")
            await asyncio.sleep(0.5)
    return tags["soak-text"], tags["soak-image"]


def make_images() -> list[tuple[str, bytes]]:
    """Crops of real photos, one per (photo, k); named ``<photo>-<k>.jpg``; ordered so every 4 cover each photo."""
    shots = photos()
    return [(f"{name}-{k}.jpg", jpeg(variant(photo, k))) for k in range(12) for name, photo in shots.items()]


# The run


def report(sampler: Sampler, duration_s: float, args: argparse.Namespace) -> list[str]:
    """Print the RSS table; returns the reasons to fail."""
    fails: list[str] = []
    print(f"\nRSS (MiB), sampled every {args.sample_s:g} s over {duration_s / 60:.1f} min; slope and growth over "
          f"the second half (bounds: {args.max_slope:g} MiB/min, {args.max_growth_mib:g} MiB)")
    print(f"  {'process':<15} {'start':>8} {'max':>8} {'end':>8} {'slope':>12} {'growth':>9}  verdict")
    for name in sorted(sampler.series):
        s = sampler.series[name]
        mib = [m for _, m in s.points]
        slope, growth = s.slope(duration_s), s.half_growth(duration_s)
        bad = []
        if slope > args.max_slope:
            bad.append(f"slope {slope:.2f} MiB/min")
        if growth > args.max_growth_mib:
            bad.append(f"grew {growth:.1f} MiB")
        if len(s.pids) > 1 or name in sampler.exited:
            bad.append(f"restarted or exited (pids {s.pids})")
        fails += [f"{name}: {b}" for b in bad]
        print(f"  {name:<15} {mib[0]:8.1f} {max(mib):8.1f} {mib[-1]:8.1f} {slope:8.2f}/min {growth:+9.1f}  "
              f"{'FAIL ' + '; '.join(bad) if bad else 'ok'}")
    # The shape of each curve (a step while a new input shape or a bigger dataset is first met, then flat; or a
    # steady line): RSS at each whole minute.
    minutes = range(int(duration_s // 60) + 1)
    print(f"\nRSS (MiB) at minute  {' '.join(f'{m:>6}' for m in minutes)}")
    for name in sorted(sampler.series):
        points = sampler.series[name].points
        at = [min(points, key=lambda p, m=m: abs(p[0] - 60 * m))[1] for m in minutes]
        print(f"  {name:<18} {' '.join(f'{x:6.1f}' for x in at)}")
    return fails


async def soak(url: str, token: str, find: Any, args: argparse.Namespace) -> int:
    images = make_images()
    headers = {"Authorization": f"Token {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120.0) as api:
        t0 = time.perf_counter()
        text_tags, image_tags = await setup(api, images)
        print(f"datasets soak-text and soak-image trained in {time.perf_counter() - t0:.1f} s")
        traffic = Traffic(api, random.Random(args.seed), text_tags, image_tags, images)
        sampler = Sampler(find, args.sample_s)
        if not find():
            print(f"no Kashf process found for {url}", file=sys.stderr)
            return 2
        print(f"sampling {', '.join(f'{n} ({p})' for n, p in sorted(find().items()))}")
        duration_s = args.minutes * 60.0
        stop = asyncio.Event()
        start = time.monotonic()
        tasks = [asyncio.create_task(sampler.run(start, stop)),
                 asyncio.create_task(paced(traffic, args.rps, args.clients, stop)),
                 asyncio.create_task(traffic.trains(args.train_every_s, stop))]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*tasks)), duration_s)
        stop.set()
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start

    print(f"\n{sum(traffic.statuses.values())} requests in {elapsed / 60:.1f} min ({args.rps:g}/s asked, "
          f"{args.clients} clients; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}):")
    for op in sorted({op for op, _ in traffic.statuses}):
        by = ", ".join(f"{status or 'no answer'}: {n}" for (o, status), n in sorted(traffic.statuses.items())
                       if o == op)
        lat = np.array(traffic.latencies[op] or [float("nan")]) * 1000
        print(f"  {op:<13} {by:<28} p50 {np.percentile(lat, 50):7.1f} ms   p95 {np.percentile(lat, 95):7.1f} ms")
    fails = report(sampler, elapsed, args)
    fails += traffic.server_errors[:10]
    for reason in fails:
        print(f"FAIL {reason}")
    print("PASS" if not fails else f"FAIL ({len(fails)})")
    return 1 if fails else 0


@contextlib.contextmanager
def own_stack() -> Iterator[tuple[str, str, Any]]:
    from bench._stack import bench_stack, wait_ready

    with tempfile.TemporaryDirectory(prefix="kashf-soak-") as work, \
            bench_stack(Path(work), SERVICES, env={"KASHF_LOG_LEVEL": "WARNING"}) as bs:
        wait_ready(bs)

        def find() -> dict[str, int]:
            found = {name: p.popen.pid for name, p in bs.stack.procs.items() if p.popen.poll() is None}
            return {**found, "nats-server": bs.nats_pid}

        yield bs.url, bs.token, find


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--start", action="store_true", help="start a stack of its own instead of --url")
    parser.add_argument("--url", default=os.environ.get("KASHF_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", default=os.environ.get("KASHF_TOKEN"))
    parser.add_argument("--rps", type=float, default=6.0, help="request starts a second, all clients together")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--train-every-s", type=float, default=30.0)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--max-slope", type=float, default=1.0, help="MiB a minute over the second half")
    parser.add_argument("--max-growth-mib", type=float, default=32.0, help="RSS growth over the second half")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.start:
        with own_stack() as (url, token, find):
            code = asyncio.run(soak(url, token, find, args))
    else:
        if not args.token:
            parser.error("--token (or KASHF_TOKEN) is needed with --url; or use --start")
        port = urlsplit(args.url).port or 80
        code = asyncio.run(soak(args.url, args.token, lambda: stack_processes(port), args))
    raise SystemExit(code)


if __name__ == "__main__":
    main()
