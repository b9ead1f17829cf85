"""The trainer's whole refit as a curve over reports (1k, 10k, 100k) and tags (10, 50, 200): time, peak memory,
database reads; a table with the issue's targets and a PNG plot.

Each point is a text dataset in a fresh Postgres database (the machine's own on 127.0.0.1:5432, else DATABASE_URL,
else the embedded one: ``devtools.servers``), seeded with one positive report per item and a stored 384-float
embedding per item (e5-like vectors, ``bench.refit.e5_like``), so no model runs: the real ``trainer.service.Trainer``
reads the reports, finds nothing to embed, reads the vectors, fits, stores the head in a private nats-server's object
store, commits the version and refreshes the suggestions. Then one new report (an item without a vector) is added and
the dataset refitted again: that refit embeds that one item only. Each point runs in its own process, so its peak RSS
is that refit's (Python, libraries and data included). Reads are counted in that process: every SQL statement and
the rows it returned (SQLAlchemy's ``after_cursor_execute``, the cursor's rowcount).

Baselines measured in the same run: the smallest point (ratios of time and memory), and v0.1's read of the vectors
(one statement with every reported id in an IN list, rows into a dict, then stacked), against today's keyset pages,
each alone in a fresh process.
Run: ``python -m bench.scale [--quick | --points 10000x50 100000x200]`` (quick: 1k and 10k reports, 10 and 50
tags; points: only those, the first is then the base of the ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from bench.refit import e5_like, peak_mib

REPO = Path(__file__).resolve().parent.parent
MODEL_ID = "bench-e5@1"
DIM = 384
PLOT = REPO / ".kashf" / "bench" / "scale.png"
# Issue 18's targets on 2 cores: (reports, tags) -> (seconds, MiB or None).
TARGETS = {(10_000, 50): (10.0, None), (100_000, 200): (120.0, 2048.0)}


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def seed(url: str, n: int, tags: int) -> int:
    """A text dataset of ``n`` items over ``tags`` tags, each item with one positive report and a stored vector."""
    data = e5_like(n, tags, seed=n + tags, n_test=1, dim=DIM)
    first_tag = data["y"].argmax(axis=1)
    conn = await asyncpg.connect(_plain(url))
    try:
        async with conn.transaction():
            account = await conn.fetchval("INSERT INTO account (name) VALUES ($1) RETURNING id", uuid.uuid4().hex)
            dataset = await conn.fetchval(
                "INSERT INTO dataset (account_id, name, title, kind) VALUES ($1, $2, $2, 'text') RETURNING id",
                account, f"scale-{n}-{tags}")
            tag_ids = [r["id"] for r in await conn.fetch(
                "INSERT INTO tag (dataset_id, title) SELECT $1, 'tag ' || g FROM generate_series(1, $2) g "
                "RETURNING id", dataset, tags)]
            await conn.copy_records_to_table(
                "data_item", columns=["dataset_id", "kind", "content_hash", "content"],
                records=((dataset, "text", f"{i:064x}", f"item {i}") for i in range(n)))
            items = [r["id"] for r in await conn.fetch(
                "SELECT id FROM data_item WHERE dataset_id = $1 ORDER BY id", dataset)]
            await conn.copy_records_to_table(
                "embedding", columns=["item_id", "model_id", "dim", "vector"],
                records=((item, MODEL_ID, DIM, data["x"][i].tobytes()) for i, item in enumerate(items)))
            await conn.copy_records_to_table(
                "report", columns=["dataset_id", "item_id", "tag_id", "positive"],
                records=((dataset, item, tag_ids[first_tag[i]], True) for i, item in enumerate(items)))
        await conn.execute("ANALYZE data_item; ANALYZE embedding; ANALYZE report")
        return int(dataset)
    finally:
        await conn.close()


class StoredOnly:
    """The trainer's embedder when every reported item already has its vector: model info, and deterministic
    vectors for what it is still asked (tag titles, the one new item), counted."""

    def __init__(self) -> None:
        self.items = 0

    async def model(self, kind: str) -> Any:
        from shared.schemas.inference import ModelInfoReply

        return ModelInfoReply(model_id=MODEL_ID, dim=DIM)

    async def embed(self, kind: str, items: Sequence[Any]) -> tuple[str, list[np.ndarray | None]]:
        self.items += len(items)
        out: list[np.ndarray | None] = []
        for item in items:
            v = np.random.default_rng(zlib.crc32(str(item.content).encode())).normal(size=DIM).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return MODEL_ID, out


class Reads:
    """Statements and the rows they returned, counted on an engine."""

    def __init__(self) -> None:
        self.statements = self.rows = self.largest = 0

    def __call__(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        self.statements += 1
        if cursor.description is not None and cursor.rowcount > 0:
            self.rows += cursor.rowcount
            self.largest = max(self.largest, cursor.rowcount)

    def take(self) -> dict[str, int]:
        got = {"statements": self.statements, "rows": self.rows, "largest": self.largest}
        self.statements = self.rows = self.largest = 0
        return got


async def refit_child(url: str, nats_url: str, dataset_id: int) -> dict[str, Any]:
    """Refit the seeded dataset, add one report, refit again: seconds, reads and peak RSS of the first."""
    from sqlalchemy import event

    from shared.bus import Bus, ensure_streams
    from shared.db.engine import make_engine, make_sessionmaker
    from trainer.heads import ObjectStoreHeads
    from trainer.service import Trainer

    bus = await Bus.connect(nats_url, "bench-scale")
    engine = make_engine(url, pool_size=4)
    try:
        await ensure_streams(bus.js)
        embedder = StoredOnly()
        trainer = Trainer(make_sessionmaker(engine), embedder, ObjectStoreHeads(bus.js))
        reads = Reads()
        event.listen(engine.sync_engine, "after_cursor_execute", reads)
        before = peak_mib()
        start = time.perf_counter()
        first = await trainer.refit(dataset_id)
        first_s = time.perf_counter() - start
        peak = peak_mib()
        first_reads = reads.take()
        assert first.state == "trained", first
        conn = await asyncpg.connect(_plain(url))
        try:
            item = await conn.fetchval("INSERT INTO data_item (dataset_id, kind, content_hash, content) "
                                       "VALUES ($1, 'text', $2, 'one new report') RETURNING id",
                                       dataset_id, "e" * 64)
            await conn.execute("INSERT INTO report (dataset_id, item_id, tag_id, positive) "
                               "SELECT $1, $2, min(id), true FROM tag WHERE dataset_id = $1", dataset_id, item)
        finally:
            await conn.close()
        start = time.perf_counter()
        second = await trainer.refit(dataset_id)
        second_s = time.perf_counter() - start
        assert second.state == "trained", second
        return {"s": first_s, "peak_mib": peak, "before_mib": before, "reads": first_reads,
                "method": sorted({t.method for t in first.result.tags}) if first.result else [],
                "embedded": first.embedded, "again_s": second_s, "again_embedded": second.embedded,
                "again_reads": reads.take()}
    finally:
        await engine.dispose()
        await bus.close(5)


async def read_child(url: str, dataset_id: int, how: str) -> dict[str, Any]:
    """Only the read of the vectors: today's keyset pages, or v0.1's one statement (its code, kept here)."""
    from sqlalchemy import select

    from shared.db.engine import make_engine, make_sessionmaker
    from shared.db.models import Embedding
    from trainer import repository

    engine = make_engine(url, pool_size=1)
    try:
        before = peak_mib()
        start = time.perf_counter()
        async with make_sessionmaker(engine)() as session:
            if how == "pages":
                _, matrix = await repository.reported_embeddings(session, dataset_id, MODEL_ID)
            else:
                reports = await repository.dataset_reports(session, dataset_id)
                rows = await session.execute(
                    select(Embedding.item_id, Embedding.dim, Embedding.vector)
                    .where(Embedding.model_id == MODEL_ID, Embedding.item_id.in_(list({r.item_id for r in reports}))))
                vectors = {r.item_id: np.frombuffer(r.vector, dtype=np.float32).reshape(r.dim) for r in rows}
                matrix = np.stack([vectors[i] for i in sorted(vectors)])
        return {"s": time.perf_counter() - start, "peak_mib": peak_mib(), "before_mib": before,
                "rows": int(matrix.shape[0])}
    except Exception as exc:  # v0.1's read fails past asyncpg's 32,767 query arguments: that is the figure
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"}
    finally:
        await engine.dispose()


def run_child(args: list[str], timeout_s: float) -> dict[str, Any]:
    try:
        done = subprocess.run([sys.executable, "-m", "bench.scale", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:120]}
    got: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return got


def verdict(n: int, tags: int, m: dict[str, Any]) -> str:
    target = TARGETS.get((n, tags))
    if target is None:
        return "-"
    if "error" in m:
        return "FAIL"
    seconds, mib = target
    ok = m["s"] < seconds and (mib is None or m["peak_mib"] < mib)
    return f"{'PASS' if ok else 'FAIL'} (<{seconds:g} s{f', <{mib:g} MiB' if mib else ''})"


def table(points: list[dict[str, Any]]) -> None:
    base = next((p for p in points if "error" not in p["refit"]), None)
    print("\nrefit = Trainer.refit of a dataset whose vectors are stored; s = wall seconds; MiB = peak RSS of the "
          "process;\nreads = SQL statements / rows returned / largest single result (rows); again = a refit after "
          "one new report;\nx base = ratio to the smallest point; read = the vectors' read alone, v0.1's one "
          "statement vs today's pages (s, MiB)")
    print(f"{'reports':>8} {'tags':>5} | {'s':>6} {'MiB':>6} {'reads':>22} {'x base s':>8} {'MiB':>5} | "
          f"{'again s':>7} {'embedded':>8} | {'read v0.1':>16} {'pages':>13} | target")
    for p in points:
        r = p["refit"]
        if "error" in r:
            print(f"{p['n']:>8} {p['tags']:>5} | {r['error']}  | {verdict(p['n'], p['tags'], r)}")
            continue
        reads = f"{r['reads']['statements']}/{r['reads']['rows']}/{r['reads']['largest']}"
        ratio = f"{r['s'] / base['refit']['s']:8.1f} {r['peak_mib'] / base['refit']['peak_mib']:5.2f}" if base else ""
        old, new = p["read_old"], p["read_pages"]
        old_cell = old["error"][:16] if "error" in old else f"{old['s']:5.2f} {old['peak_mib']:6.0f}"
        new_cell = new["error"][:13] if "error" in new else f"{new['s']:5.2f} {new['peak_mib']:6.0f}"
        print(f"{p['n']:>8} {p['tags']:>5} | {r['s']:6.1f} {r['peak_mib']:6.0f} {reads:>22} {ratio} | "
              f"{r['again_s']:7.1f} {r['again_embedded']:>8} | {old_cell:>16} {new_cell:>13} | "
              f"{verdict(p['n'], p['tags'], r)}", flush=True)


def plot(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    panels = (("refit seconds", lambda r: r["s"]), ("peak RSS (MiB)", lambda r: r["peak_mib"]),
              ("rows read from Postgres", lambda r: r["reads"]["rows"]))
    for ax, (title, value) in zip(axes, panels, strict=True):
        for tags in sorted({p["tags"] for p in points}):
            ok = [p for p in points if p["tags"] == tags and "error" not in p["refit"]]
            ax.plot([p["n"] for p in ok], [value(p["refit"]) for p in ok], marker="o", label=f"{tags} tags")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("reported items")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    for (n, _tags), (seconds, mib) in TARGETS.items():
        axes[0].plot([n], [seconds], marker="_", markersize=20, color="red")
        if mib:
            axes[1].plot([n], [mib], marker="_", markersize=20, color="red")
    axes[0].legend()
    fig.suptitle(f"Trainer refit cost (python -m bench.scale; {os.cpu_count()} cores; red: issue 18 targets)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1k and 10k reports, 10 and 50 tags")
    parser.add_argument("--plot", type=Path, default=PLOT, help="where the PNG goes")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per point")
    parser.add_argument("--points", nargs="+", metavar="REPORTSxTAGS", help="only these points, e.g. 100000x200")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, url, *rest = args.child
        if what == "seed":
            result: Any = {"dataset_id": asyncio.run(seed(url, int(rest[0]), int(rest[1])))}
        elif what == "refit":
            result = asyncio.run(refit_child(url, rest[0], int(rest[1])))
        else:
            result = asyncio.run(read_child(url, int(rest[1]), rest[0]))
        print(json.dumps(result))
        return
    from devtools import servers
    from shared.db.migrate import upgrade

    sizes, tag_counts = ([1000, 10_000], [10, 50]) if args.quick else ([1000, 10_000, 100_000], [10, 50, 200])
    grid = [(n, tags) for n in sizes for tags in tag_counts]
    if args.points:
        grid = [(int(n), int(tags)) for n, tags in (p.lower().split("x") for p in args.points)]
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    with tempfile.TemporaryDirectory(prefix="kashf-scale-") as tmp:
        server, handle = servers.postgres_server(Path(tmp) / "pg")
        name = f"kashf_scale_{uuid.uuid4().hex[:8]}"
        url = asyncio.run(servers.create_database(server, name))
        nats, nats_url = servers.start_nats(Path(tmp) / "nats")
        try:
            upgrade(url)
            points = []
            for n, tags in grid:
                made = run_child(["--child", "seed", url, str(n), str(tags)], args.timeout)
                if "error" in made:
                    raise SystemExit(f"seeding {n} x {tags} failed: {made['error']}")
                ds = str(made["dataset_id"])
                point = {"n": n, "tags": tags,
                         "read_old": run_child(["--child", "read", url, "v0.1", ds], args.timeout),
                         "read_pages": run_child(["--child", "read", url, "pages", ds], args.timeout),
                         "refit": run_child(["--child", "refit", url, nats_url, ds], args.timeout)}
                points.append(point)
                print(f"  {n} x {tags}: {json.dumps(point['refit'])[:200]}", flush=True)
        finally:
            nats.terminate()
            nats.wait(10)
            asyncio.run(servers.drop_database(server, name))
            del handle
    table(points)
    plot(points, args.plot)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end; plot: {args.plot}")


if __name__ == "__main__":
    main()
