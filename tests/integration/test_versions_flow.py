"""Head versions on the real processes: a fit made worse on purpose (flipped labels) is held and the live head
keeps answering; force promotes it; use_version rolls back and the old predictions come back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.integration.test_text_flow import make_text_dataset, wait_trained
from tests.integration.texts import DELIVERY, RECOMMEND, TRAIN, UNHAPPY, UNSEEN

pytestmark = pytest.mark.integration

DATASET = "versions"


async def versions(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    r = await api.post("/api/list_versions/", json={"dataset": DATASET})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def tag_unseen(api: httpx.AsyncClient) -> list[Any]:
    r = await api.post("/api/tag_texts/", json={"dataset": DATASET, "contents": [t for t, _ in UNSEEN]})
    assert r.status_code == 200, r.text
    return [x["tags"] for x in r.json()]


async def wait_held(api: httpx.AsyncClient, timeout_s: float = 180.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Until the newest version is held and the dataset is trained again (by its live head)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listed = await versions(api)
        info = (await api.post("/api/dataset_info/", json={"dataset": DATASET})).json()
        if len(listed) > 1 and listed[0]["state"] == "held" and info["state"] == "trained":
            return listed[0], info
        await asyncio.sleep(0.5)
    raise AssertionError(f"no held version after {timeout_s} s: {listed} {info}")


async def test_flipped_labels_are_held_force_promotes_and_use_version_rolls_back(api: httpx.AsyncClient) -> None:
    tag_ids = await make_text_dataset(api, DATASET)
    await api.post("/api/train_dataset/", json={"dataset": DATASET})
    first = await wait_trained(api, DATASET)
    assert first["version"] == 1
    assert [(v["version"], v["state"]) for v in await versions(api)] == [(1, "live")]
    before = await tag_unseen(api)

    # Labels made wrong on purpose: half of each tag's texts reported for the next tag instead.
    order = [RECOMMEND, UNHAPPY, DELIVERY]
    flips = []
    for i, title in enumerate(order):
        other = order[(i + 1) % len(order)]
        for text in TRAIN[title][:3]:
            flips += [{"content": text, "tag_id": tag_ids[title], "positive": False},
                      {"content": text, "tag_id": tag_ids[other], "positive": True}]
    r = await api.post("/api/report_text_tags/", json=flips)
    assert r.status_code == 200, r.text

    held, info = await wait_held(api)
    assert info["version"] == 1  # the live head keeps answering
    assert held["evaluation"]["f1"] < next(v for v in await versions(api) if v["version"] == 1)["evaluation"]["f1"]
    assert await tag_unseen(api) == before

    r = await api.post("/api/train_dataset/", json={"dataset": DATASET, "force": True})
    assert r.status_code == 200, r.text
    forced = await wait_trained(api, DATASET)
    assert forced["version"] > held["version"]
    listed = await versions(api)
    assert listed[0] == {**listed[0], "version": forced["version"], "state": "live"}
    assert {v["version"]: v["state"] for v in listed}[1] == "kept"
    after = await tag_unseen(api)
    assert after != before  # the flipped labels answer now

    r = await api.post("/api/use_version/", json={"dataset": DATASET, "version": 1})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1
    assert [t["threshold"] for t in r.json()["tags"]] == [t["threshold"] for t in first["tags"]]
    assert await tag_unseen(api) == before  # the old predictions come back
