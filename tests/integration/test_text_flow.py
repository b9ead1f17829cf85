"""The first complete loop on the real processes: report, train, tag; figures in dataset_info."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.integration.texts import TRAIN, UNSEEN

pytestmark = pytest.mark.integration


async def wait_trained(api: httpx.AsyncClient, dataset: str, timeout_s: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout_s
    info: dict = {}
    while time.monotonic() < deadline:
        r = await api.post("/api/dataset_info/", json={"dataset": dataset, "tags": True})
        assert r.status_code == 200, r.text
        info = r.json()
        if info["state"] == "trained":
            return info
        assert info["state"] in {"untrained", "waiting", "training"}, info
        await asyncio.sleep(0.5)
    raise AssertionError(f"dataset {dataset} not trained after {timeout_s} s: {info}")


async def make_text_dataset(api: httpx.AsyncClient, dataset: str) -> dict[str, int]:
    r = await api.post("/api/create_dataset/", json={"dataset": dataset, "title": "نظرات", "kind": "text"})
    assert r.status_code == 200, r.text
    tag_ids: dict[str, int] = {}
    for title in TRAIN:
        r = await api.post("/api/create_tag/", json={"dataset": dataset, "title": title})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["title"] == title and body["active"] is True
        tag_ids[title] = body["tag_id"]
    reports = [
        {"content": text, "tag_id": tag_ids[title], "positive": True}
        for title, texts in TRAIN.items() for text in texts
    ]
    r = await api.post("/api/report_text_tags/", json=reports)
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out) == len(reports)
    assert out[0]["report"] == f"[[{tag_ids[next(iter(TRAIN))]},true]]"
    return tag_ids


async def test_report_train_tag(api: httpx.AsyncClient) -> None:
    tag_ids = await make_text_dataset(api, "reviews")
    r = await api.post("/api/train_dataset/", json={"dataset": "reviews"})
    assert r.json() == {"dataset": "reviews", "state": "waiting"}
    info = await wait_trained(api, "reviews")

    assert info["report_count"] == sum(len(v) for v in TRAIN.values())
    assert info["data_count"] == info["report_count"]
    assert info["evaluation"]["precision"] is not None and info["evaluation"]["recall"] is not None
    by_title = {t["title"]: t for t in info["tags"]}
    for title, tid in tag_ids.items():
        assert by_title[title]["id"] == tid
        assert by_title[title]["reports"] == len(TRAIN[title])
        assert by_title[title]["evaluation"]["f1"] is not None

    r = await api.post("/api/tag_texts/", json={"dataset": "reviews", "contents": [t for t, _ in UNSEEN]})
    assert r.status_code == 200, r.text
    results = r.json()
    assert [x["content"] for x in results] == [t for t, _ in UNSEEN]
    right = sum(1 for x, (_, want) in zip(results, UNSEEN, strict=True) if x["tags"][0]["id"] == tag_ids[want])
    assert right >= len(UNSEEN) - 1, results
    for x in results:
        probs = [t["probability"] for t in x["tags"]]
        assert probs == sorted(probs, reverse=True)
        assert all(round(p, 2) == p for p in probs)

    # predictions are counted per tag
    info = (await api.post("/api/dataset_info/", json={"dataset": "reviews", "tags": True})).json()
    assert sum(t["predictions"] for t in info["tags"]) >= right


async def test_inactive_tag_is_never_predicted(api: httpx.AsyncClient) -> None:
    tag_ids = await make_text_dataset(api, "reviews-inactive")
    await api.post("/api/train_dataset/", json={"dataset": "reviews-inactive"})
    await wait_trained(api, "reviews-inactive")
    first = next(iter(TRAIN))
    r = await api.post("/api/update_tag/", json={"dataset": "reviews-inactive", "tag_id": tag_ids[first],
                                                  "title": first, "active": False})
    assert r.json() == {"title": first, "tag_id": tag_ids[first], "active": False}
    r = await api.post("/api/tag_texts/", json={"dataset": "reviews-inactive", "contents": TRAIN[first][:3]})
    for item in r.json():
        assert tag_ids[first] not in [t["id"] for t in item["tags"]]
