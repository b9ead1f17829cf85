"""Processes die; nothing acknowledged is lost and the stack recovers (real processes, SIGKILL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import asyncpg
import httpx
import nats
import pytest

from devtools.stack import Stack
from tests.integration.test_text_flow import make_text_dataset, wait_trained
from tests.integration.texts import TRAIN

pytestmark = pytest.mark.integration


async def stream_report_ids(nats_url: str, dataset_id: int) -> set[int]:
    """Every report id whose event is in the KASHF_EVENTS stream for this dataset."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(f"kashf.events.report.{dataset_id}", ordered_consumer=True)
        ids: set[int] = set()
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except nats.errors.TimeoutError:
                return ids
            ids.add(json.loads(msg.data)["report_id"])
    finally:
        await nc.close()


async def test_gateway_killed_while_reports_are_posted(stack: Stack, token: str) -> None:
    headers = {"Authorization": f"Token {token}"}
    async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=30) as api:
        r = await api.post("/api/create_tag/", json={"dataset": "crash", "title": "t"})
        tag_id = r.json()["tag_id"]

        answered = asyncio.Event()
        count = 0

        async def post(i: int) -> int | None:
            nonlocal count
            with contextlib.suppress(httpx.HTTPError):
                r = await api.post("/api/report_text_tags/",
                                   json=[{"content": f"نظر شماره {i} درباره محصول", "tag_id": tag_id,
                                          "positive": i % 2 == 0}])
                if r.status_code == 200:
                    count += 1
                    if count >= 10:
                        answered.set()
                    return int(r.json()[0]["id"])
            return None

        tasks = [asyncio.create_task(post(i)) for i in range(150)]
        # Kill mid-stream: after some reports were acknowledged, while most are still in flight.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answered.wait(), timeout=30)
        stack.stop("gateway", kill=True)
        acked = {i for i in await asyncio.gather(*tasks) if i is not None}
    assert acked, "no report was acknowledged before the kill"
    stack.start("gateway")
    stack.wait_ready(("gateway",))

    conn = await asyncpg.connect(stack.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch("SELECT r.id, r.item_id, r.dataset_id FROM report r JOIN tag t ON t.id = r.tag_id "
                                "WHERE t.id = $1", tag_id)
    finally:
        await conn.close()
    stored_items = {r["item_id"] for r in rows}
    assert acked <= stored_items  # every 200 is in Postgres
    dataset_id = rows[0]["dataset_id"]
    want = {r["id"] for r in rows}
    deadline = time.monotonic() + 30
    seen: set[int] = set()
    while time.monotonic() < deadline and not want <= seen:
        seen = await stream_report_ids(stack.nats_url, dataset_id)
    assert want <= seen  # and every stored report's event reached the stream (outbox sweep)


async def test_text_service_down_fails_fast_then_recovers(stack: Stack, api: httpx.AsyncClient) -> None:
    await make_text_dataset(api, "outage")
    body = {"dataset": "outage", "contents": ["ارزش خریدنش رو داره"]}
    assert (await api.post("/api/tag_texts/", json=body)).status_code == 200
    stack.stop("text_service", kill=True)
    try:
        started = time.monotonic()
        r = await api.post("/api/tag_texts/", json=body)
        assert r.status_code in (503, 504), r.text
        assert r.json()["error"] in ("unavailable", "timeout")
        assert time.monotonic() - started < 10
    finally:
        stack.start("text_service")
        stack.wait_ready(("text_service",))
    r = await api.post("/api/tag_texts/", json=body)
    assert r.status_code == 200, r.text


async def test_trainer_killed_mid_training_still_trains(stack: Stack, api: httpx.AsyncClient) -> None:
    await make_text_dataset(api, "trainer-crash")
    await api.post("/api/train_dataset/", json={"dataset": "trainer-crash"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = (await api.post("/api/dataset_info/", json={"dataset": "trainer-crash"})).json()["state"]
        if state in ("training", "trained"):
            break
        await asyncio.sleep(0.02)
    killed = time.monotonic()
    stack.stop("trainer", kill=True)
    stack.start("trainer")
    stack.wait_ready(("trainer",))
    info = await wait_trained(api, "trainer-crash")
    assert info["report_count"] == sum(len(v) for v in TRAIN.values())
    print(f"\ntrainer SIGKILL mid-refit (state {state}): trained {time.monotonic() - killed:.1f} s after the kill")
