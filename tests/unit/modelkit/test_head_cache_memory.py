"""Heads of 10,000 datasets asked for at random through a HeadCache of 500 (``KASHF_HEAD_CACHE_ENTRIES``): the
cache never holds more than 500, and the process's memory grows by no more than 500 heads' worth plus slack.

Every dataset has a real head in the object store of a nats-server of this module's own: 50 tags over
384 dimensions (a text dataset of 50 tags on e5-small), whose weight rows repeat one random row, so a blob is
3 KB in the store while a loaded head holds its whole 50 x 384 float32 matrix (77 KB), as any such head does.
The requests run in a process of their own (headcache_probe.py), so its RSS is the cache's, not pytest's."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from devtools import servers
from modelkit.heads import Head, store_head
from shared.bus import Bus, ensure_streams

REPO = Path(__file__).resolve().parents[3]
DATASETS, TAGS, DIM = 10_000, 50, 384
ENTRIES = 500
MIB = 2**20


def head_of(dataset_id: int, row: np.ndarray) -> Head:
    return Head(model_id="e5-like@1", version=1, tag_ids=np.arange(dataset_id, dataset_id + TAGS, dtype=np.int64),
                weights=np.tile(row, (TAGS, 1)), bias=np.zeros(TAGS, np.float32),
                calibration=np.tile(np.array([1.0, 0.0], np.float32), (TAGS, 1)),
                thresholds=np.full(TAGS, 0.5, np.float32))


@pytest.fixture(scope="module")
def heads_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server whose heads bucket holds version 1 of datasets 0 .. DATASETS - 1."""
    proc, url = servers.start_nats(tmp_path_factory.mktemp("heads-nats"))

    async def fill() -> None:
        bus = await Bus.connect(url, "test-heads-fill")
        await ensure_streams(bus.js)
        rng = np.random.default_rng(0)
        slots = asyncio.Semaphore(32)

        async def put(dataset_id: int) -> None:
            async with slots:
                await store_head(bus.js, dataset_id, head_of(dataset_id, rng.standard_normal(DIM).astype(np.float32)))

        await asyncio.gather(*(put(d) for d in range(DATASETS)))
        await bus.close(5)

    asyncio.run(fill())
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def probe(url: str, entries: int, gets: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.unit.modelkit.headcache_probe", "--nats", url, "--entries", str(entries),
         "--datasets", str(DATASETS), "--gets", str(gets)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def bound(head_bytes: float, entries: int) -> float:
    """What a cache of ``entries`` heads may add to the process: the heads' arrays plus a quarter (each is its
    own allocation, with its numpy and Head objects, freed in random order: fragmentation), plus 32 MiB for what
    does not scale with the cache (the loads in flight, 16 at a time, each holding its blob, the decompressed
    arrays and their float32 copies; the worker threads' malloc arenas; the NATS client's buffers)."""
    return entries * head_bytes * 1.25 + 32 * MIB


def test_10000_datasets_at_random_through_a_cache_of_500_stay_within_its_memory_bound(heads_nats: str) -> None:
    got = probe(heads_nats, ENTRIES, gets=3000)
    growth, limit = got["rss_max"] - got["rss_start"], bound(got["head_bytes"], ENTRIES)
    print(f"\ncache {ENTRIES}: {got['distinct']:.0f} datasets asked in {got['seconds']:.1f} s, most held "
          f"{got['most_held']:.0f}, RSS +{growth / MIB:.1f} MiB (bound {limit / MIB:.1f} MiB, "
          f"head {got['head_bytes'] / 1024:.0f} KiB)")
    assert got["head_bytes"] == TAGS * DIM * 4 + TAGS * (8 + 8 + 4 + 4)  # the head measured is the head stored
    assert got["distinct"] > 2 * ENTRIES  # the cache was made to evict, many times over
    assert got["most_held"] == ENTRIES
    assert growth <= limit


def test_without_the_bound_the_same_requests_would_pass_it(heads_nats: str) -> None:
    """The bound is tight enough to catch a cache that keeps everything it loads: the measure can fail."""
    got = probe(heads_nats, DATASETS, gets=2000)
    growth, limit = got["rss_max"] - got["rss_start"], bound(got["head_bytes"], ENTRIES)
    print(f"\ncache {DATASETS}: {got['distinct']:.0f} datasets asked, most held {got['most_held']:.0f}, "
          f"RSS +{growth / MIB:.1f} MiB (the bound for {ENTRIES}: {limit / MIB:.1f} MiB)")
    assert got["most_held"] == got["distinct"] > ENTRIES
    assert growth > limit
