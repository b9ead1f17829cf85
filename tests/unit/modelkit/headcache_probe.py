"""A process of its own that asks a HeadCache for heads of random datasets, as a model service's requests do, and
prints as JSON the most heads the cache ever held and its RSS before and at most during the run.

``python -m tests.unit.modelkit.headcache_probe --nats URL --entries 500 --datasets 10000 --gets 3000``
(test_head_cache_memory.py runs it: a process of its own, so the figures are the cache's and not pytest's)."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

import psutil

from modelkit.heads import HeadCache
from shared.bus import Bus
from shared.schemas.inference import HeadRef


async def run(args: argparse.Namespace) -> dict[str, float]:
    bus = await Bus.connect(args.nats, "headcache-probe")
    cache = HeadCache(bus.js, args.entries)
    process = psutil.Process()
    rng = random.Random(args.seed)
    first = await cache.get(HeadRef(dataset_id=0, version=1))  # the first load starts the worker thread
    assert first is not None
    head_bytes = sum(a.nbytes for a in (first.tag_ids, first.weights, first.bias, first.calibration,
                                        first.thresholds))
    rss_start = rss_max = process.memory_info().rss
    most = len(cache)
    asked = {0}
    started = time.perf_counter()

    async def get(dataset_id: int) -> None:
        nonlocal most
        head = await cache.get(HeadRef(dataset_id=dataset_id, version=1))
        assert head is not None and head.tag_ids[0] == dataset_id
        most = max(most, len(cache))

    for _ in range(0, args.gets, args.concurrency):  # a batch of concurrent requests at a time
        batch = [rng.randrange(args.datasets) for _ in range(args.concurrency)]
        asked.update(batch)
        await asyncio.gather(*(get(d) for d in batch))
        rss_max = max(rss_max, process.memory_info().rss)
    seconds = time.perf_counter() - started
    await bus.close(2)
    return {"most_held": most, "head_bytes": head_bytes, "rss_start": rss_start, "rss_max": rss_max,
            "distinct": len(asked), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nats", required=True)
    parser.add_argument("--entries", type=int, required=True)
    parser.add_argument("--datasets", type=int, required=True)
    parser.add_argument("--gets", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
