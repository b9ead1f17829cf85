"""Zero-shot on the real processes: a text dataset with tags and no report is trained from its tag titles
(dataset_info says "zero_shot") and tag_texts answers before any report; a new tag reaches the head without a
train call; reports then train it as usual. An image dataset with no report still cannot be trained."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from devtools.stack import Stack
from kashf_client import AsyncClient
from tests.integration.test_text_flow import wait_trained
from tests.unit.text.texts import ZERO_SHOT_TITLES, ZERO_SHOT_UNSEEN

pytestmark = pytest.mark.integration


async def info(api: httpx.AsyncClient, dataset: str) -> dict:
    r = await api.post("/api/dataset_info/", json={"dataset": dataset, "tags": True})
    assert r.status_code == 200, r.text
    return r.json()


async def tag_texts(api: httpx.AsyncClient, dataset: str, texts: list[str]) -> list[dict]:
    r = await api.post("/api/tag_texts/", json={"dataset": dataset, "contents": texts})
    assert r.status_code == 200, r.text
    return r.json()


async def test_titles_tag_texts_before_any_report(api: httpx.AsyncClient, stack: Stack, token: str) -> None:
    r = await api.post("/api/create_dataset/", json={"dataset": "zero-shot", "kind": "text"})
    assert r.status_code == 200, r.text
    ids = [(await api.post("/api/create_tag/", json={"dataset": "zero-shot", "title": t})).json()["tag_id"]
           for t in ZERO_SHOT_TITLES]
    r = await api.post("/api/train_dataset/", json={"dataset": "zero-shot"})
    assert r.json() == {"dataset": "zero-shot", "state": "waiting"}
    trained = await wait_trained(api, "zero-shot")
    assert (trained["mode"], trained["version"], trained["report_count"]) == ("zero_shot", 1, 0)
    assert trained["evaluation"] == {"recall": None, "precision": None}  # nothing to cross-validate
    assert [t["threshold"] for t in trained["tags"]] == [0.5] * 4
    r = await api.post("/api/list_versions/", json={"dataset": "zero-shot"})
    assert [(v["version"], v["state"], v["mode"]) for v in r.json()] == [(1, "live", "zero_shot")]
    async with AsyncClient(stack.url, token) as client:  # the Python client types the field
        assert (await client.dataset_info("zero-shot")).mode == "zero_shot"
        assert [v.mode for v in await client.list_versions("zero-shot")] == ["zero_shot"]

    results = await tag_texts(api, "zero-shot", [t for t, _ in ZERO_SHOT_UNSEEN])
    right = sum(x["tags"][0]["id"] == ids[want] for x, (_, want) in zip(results, ZERO_SHOT_UNSEEN, strict=True))
    assert right >= 6, results  # chance: 2 of 8 (tests/unit/text/test_text_zero_shot.py)

    # A new tag reaches the zero-shot head by itself (a debounced refit), no train_dataset call.
    r = await api.post("/api/create_tag/", json={"dataset": "zero-shot", "title": "موسیقی و کنسرت"})
    music = r.json()["tag_id"]
    deadline = time.monotonic() + 120
    while (now := await info(api, "zero-shot"))["version"] != 2:
        assert time.monotonic() < deadline, now
        await asyncio.sleep(0.5)
    assert now["mode"] == "zero_shot"
    songs = ["The band played their new songs to a sold-out crowd last night",
             "خواننده محبوب دیشب برای هوادارانش آواز خواند و گیتار زد"]
    assert [x["tags"][0]["id"] for x in await tag_texts(api, "zero-shot", songs)] == [music, music]

    # Reports make it a trained head like any other.
    reports = [{"content": text, "tag_id": ids[want], "positive": True} for text, want in ZERO_SHOT_UNSEEN]
    assert (await api.post("/api/report_text_tags/", json=reports)).status_code == 200
    await api.post("/api/train_dataset/", json={"dataset": "zero-shot"})
    trained = await wait_trained(api, "zero-shot")
    assert trained["mode"] == "trained" and trained["version"] >= 3 and trained["report_count"] == 8


async def test_an_image_dataset_without_reports_cannot_be_trained(api: httpx.AsyncClient) -> None:
    await api.post("/api/create_dataset/", json={"dataset": "zero-shot-photos", "kind": "image"})
    for title in ("cat", "rocket"):
        await api.post("/api/create_tag/", json={"dataset": "zero-shot-photos", "title": title})
    await api.post("/api/train_dataset/", json={"dataset": "zero-shot-photos"})
    deadline = time.monotonic() + 60
    while (now := await info(api, "zero-shot-photos"))["state"] in {"waiting", "training"}:
        assert time.monotonic() < deadline, now
        await asyncio.sleep(0.3)
    assert (now["state"], now["version"], now["mode"]) == ("failed", None, None)
