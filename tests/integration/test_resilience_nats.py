"""nats-server killed (SIGKILL) under steady reports and tag calls: nothing acknowledged is lost, clients see
only 503/504 meanwhile, and the stack recovers on its own once the server is back (same port and store)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest

from devtools.stack import Stack
from tests.integration.conftest import NatsServer
from tests.integration.test_text_flow import make_text_dataset, wait_trained
from tests.integration.texts import TRAIN

pytestmark = pytest.mark.integration

OUTAGE_S = 6.0
# Each loop sends about 4 requests a second: both together stay under the account's rate (600 a minute).
PAUSE_S = 0.25


async def test_nats_killed_under_load_loses_nothing_and_recovers(
    stack: Stack, stack_nats: NatsServer, api: httpx.AsyncClient
) -> None:
    tags = await make_text_dataset(api, "nats-chaos")
    tag_id = next(iter(tags.values()))
    acked: list[str] = []
    statuses: dict[str, list[int]] = {"report": [], "tag": []}
    stop = asyncio.Event()

    async def report_loop() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            text = f"گزارش شماره {i} در آزمون قطع پیام‌رسان"
            with contextlib.suppress(httpx.TransportError):
                r = await api.post("/api/report_text_tags/", json=[{"content": text, "tag_id": tag_id,
                                                                     "positive": True}])
                statuses["report"].append(r.status_code)
                if r.status_code == 200:
                    acked.append(text)
            await asyncio.sleep(PAUSE_S)

    async def tag_loop() -> None:
        while not stop.is_set():
            with contextlib.suppress(httpx.TransportError):
                r = await api.post("/api/tag_texts/", json={"dataset": "nats-chaos", "contents": ["یک متن"]})
                statuses["tag"].append(r.status_code)
            await asyncio.sleep(PAUSE_S)

    loops = [asyncio.create_task(report_loop()), asyncio.create_task(tag_loop())]
    try:
        await asyncio.sleep(2.0)
        stack_nats.kill()
        await asyncio.sleep(OUTAGE_S)
        during = len(statuses["tag"])
        restarted = time.monotonic()
        stack_nats.restart()
        # Recovered: a tag call answered 200 after the restart.
        while not statuses["tag"][during:] or statuses["tag"][-1] != 200:
            assert time.monotonic() - restarted < 90, statuses["tag"][-20:]
            await asyncio.sleep(0.1)
        recovery_s = time.monotonic() - restarted
        await asyncio.sleep(2.0)
    finally:
        stop.set()
        await asyncio.gather(*loops)
    for kind, seen in statuses.items():
        assert set(seen) <= {200, 503, 504}, (kind, sorted(set(seen)))  # never a 500, never a hang
    assert 503 in statuses["tag"]  # the outage was seen, and answered as one
    assert statuses["report"].count(200) == len(acked) and len(acked) > 10

    # Every acknowledged report reaches Postgres and the trainer: train and count.
    r = await api.post("/api/train_dataset/", json={"dataset": "nats-chaos"})
    assert r.status_code == 200, r.text
    info = await wait_trained(api, "nats-chaos")
    assert info["report_count"] == sum(len(v) for v in TRAIN.values()) + len(set(acked))
    print(f"\nnats-server SIGKILL for {OUTAGE_S:g} s: {len(acked)} reports acknowledged, none lost; "
          f"tag calls 503 meanwhile ({statuses['tag'].count(503)}); tagging back {recovery_s:.1f} s after restart")
