"""search: which index, by measurement. Postgres here has no pgvector, so the candidates are brute force in
numpy over vectors loaded from Postgres per query (the baseline), brute force over a per-dataset matrix cached
in the gateway (``gateway.infra.searchindex``, what the gateway uses), and an in-process ANN index (faiss HNSW,
when ``faiss`` is importable; it is no dependency of Kashf). One dataset of 1k, 10k and 100k items with
384-d e5-like vectors (clustered, unit norm) in a fresh database; latency of one query (top 10), ratios
against the baseline in the same run, and HNSW's recall@10 against exact search. Then a correctness check
on real e5 embeddings: each review of ``tests/unit/trainer/reviews.py`` found first by a reworded query
among 100k distractors.

Run: ``python -m bench.search`` (``--sizes 1000,10000,100000``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg
import numpy as np

from devtools import servers
from gateway.infra.searchindex import Matrix
from gateway.repository import Repository
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.migrate import upgrade

REPO = Path(__file__).resolve().parent.parent
DIM = 384
MODEL = "bench-e5"


def e5_like(n: int, seed: int = 0, centres: int = 300) -> np.ndarray:
    """Unit vectors around ``centres`` directions sharing a common component, as e5 embeddings do
    (their cosines sit mostly between 0.7 and 0.95)."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=DIM)
    c = rng.normal(size=(centres, DIM)) + 2.5 * common
    x = c[rng.integers(0, centres, size=n)] + 0.9 * rng.normal(size=(n, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


async def fill(url: str, vectors: np.ndarray, offset: int) -> int:
    """A dataset whose items carry ``vectors`` (COPY); returns its id."""
    conn = await asyncpg.connect(url)
    try:
        account = await conn.fetchval("INSERT INTO account (name) VALUES ($1) RETURNING id", uuid.uuid4().hex[:12])
        dataset = await conn.fetchval(
            "INSERT INTO dataset (account_id, name, title, kind) VALUES ($1, $2, $2, 'text') RETURNING id",
            account, f"d{len(vectors)}")
        ids = list(range(offset, offset + len(vectors)))
        await conn.copy_records_to_table(
            "data_item", columns=["id", "dataset_id", "kind", "content", "content_hash"],
            records=[(i, dataset, "text", f"item {i}", f"{i:064x}") for i in ids])
        await conn.copy_records_to_table(
            "embedding", columns=["item_id", "model_id", "dim", "vector"],
            records=[(i, MODEL, DIM, v.tobytes()) for i, v in zip(ids, vectors, strict=True)])
        await conn.execute("ANALYZE data_item; ANALYZE embedding")
        return int(dataset)
    finally:
        await conn.close()


def timed(run: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` calls (after one warm-up)."""
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def load_matrix(sessions: object, dataset_id: int) -> Matrix:
    async with sessions() as session:  # type: ignore[operator]
        return Matrix.from_rows(*await Repository(session).embeddings_of_dataset(dataset_id, MODEL))


def faiss_hnsw(x: np.ndarray) -> tuple[Callable[[np.ndarray, int], np.ndarray], float] | None:
    try:
        import faiss  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        return None
    faiss.omp_set_num_threads(1)
    start = time.perf_counter()
    index = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    index.add(x)
    index.hnsw.efSearch = 64
    build = time.perf_counter() - start

    def query(q: np.ndarray, k: int) -> np.ndarray:
        _, found = index.search(q[None].astype(np.float32), k)
        out: np.ndarray = found[0]
        return out

    return query, build


def measure(url: str, n: int, offset: int, queries: int) -> list[str]:
    """One size's cells: the baseline, the cached matrix and faiss HNSW."""
    x = e5_like(n, seed=n)
    dataset_id = asyncio.run(fill(url.replace("postgresql+asyncpg://", "postgresql://"), x, offset))
    qs = e5_like(queries, seed=n + 1)

    async def baseline() -> tuple[list[float], Matrix]:
        engine = make_engine(url, pool_size=2)
        sessions = make_sessionmaker(engine)
        try:
            times, matrix = [], await load_matrix(sessions, dataset_id)
            for q in qs[: max(3, queries // 10) if n >= 100_000 else queries]:
                start = time.perf_counter()
                matrix = await load_matrix(sessions, dataset_id)
                matrix.nearest(q, 10)
                times.append(time.perf_counter() - start)
            return times, matrix
        finally:
            await engine.dispose()

    times, matrix = asyncio.run(baseline())
    base = statistics.median(times)
    turn = iter(range(10**9))
    cached = timed(lambda: matrix.nearest(qs[next(turn) % queries], 10), queries)
    cells = [f"{base * 1e3:9.1f} ms (x1)".rjust(27), f"{cached * 1e3:7.2f} ms (x{base / cached:,.0f})".rjust(22)]
    ann = faiss_hnsw(matrix.vectors)
    if ann is None:
        return [*cells, "faiss not installed".rjust(40)]
    query, build = ann
    hnsw = timed(lambda: query(qs[next(turn) % queries], 10), queries)
    exact = [{int(np.searchsorted(matrix.ids, a)) for a, _ in matrix.nearest(q, 10)} for q in qs]
    recall = np.mean([len(set(query(q, 10).tolist()) & e) / 10 for q, e in zip(qs, exact, strict=True)])
    ann_cell = f"{hnsw * 1e3:6.2f} ms (x{base / hnsw:,.0f}), recall@10 {recall:.3f}, build {build:.1f} s"
    return [*cells, ann_cell.rjust(40)]


def run(sizes: list[int], queries: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="kashf-bench-search-"))
    server_url, handle = servers.postgres_server(work / "postgres")
    name = f"kashf_bench_{uuid.uuid4().hex[:10]}"
    url = asyncio.run(servers.create_database(server_url, name))
    try:
        upgrade(url)
        print(f"search latency, one query, top 10; {DIM}-d vectors; median of {queries} queries; "
              f"ratios against the baseline (Postgres load + numpy) in this run")
        print(f"{'items':>7} | {'Postgres + numpy (baseline)':>27} | {'cached matrix':>22} | "
              f"{'faiss HNSW (M=32, ef=64)':>40}")
        offset = 1
        for n in sizes:
            print(f"{n:>7} | " + " | ".join(measure(url, n, offset, queries)))
            offset += n
        real_check(work)
    finally:
        asyncio.run(servers.drop_database(server_url, name))
        if handle is not None:
            handle.cleanup()


def real_check(work: Path) -> None:
    """Reworded reviews (trailing words dropped, punctuation added) find their review first among 100k."""
    from modelkit.onnx.text import TextEncoder
    from tests.unit.trainer.reviews import TAGS

    texts = [t for group in TAGS.values() for t in group]
    encoder = TextEncoder(REPO / "models" / "text" / "multilingual-e5-small", device="cpu")
    reviews = encoder.encode(texts).astype(np.float32)
    reworded = encoder.encode([" ".join(t.split()[:-1]) + " !" if len(t.split()) > 3 else t + " !"
                               for t in texts]).astype(np.float32)
    distractors = e5_like(100_000, seed=7)
    ids = list(range(len(texts) + len(distractors)))
    matrix = Matrix.from_rows(ids, [v.tobytes() for v in np.concatenate([reviews, distractors])], DIM)
    top = [matrix.nearest(q, 1)[0][0] for q in reworded]
    hits = sum(int(a == i) for i, a in enumerate(top))
    same_tag = [int(np.argmax(np.delete(reviews @ r, i))) for i, r in enumerate(reviews)]
    labels = np.array([g for g, group in enumerate(TAGS.values()) for _ in group])
    neighbour_tag = np.mean([labels[j if j < i else j + 1] == labels[i] for i, j in enumerate(same_tag)])
    print(f"real e5 (reviews.py): {hits}/{len(texts)} reworded reviews find their review first among "
          f"{len(ids):,} items; a review's nearest other review has its tag {neighbour_tag:.0%} of the time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    run([int(s) for s in args.sizes.split(",")], args.queries)


if __name__ == "__main__":
    main()
