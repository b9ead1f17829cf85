"""What to label next on the real processes: tag calls kept as the pool (which the fit self-trains on),
suggestions after a fit, a report closing the loop, and search over the stored e5 embeddings."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.integration.test_text_flow import wait_trained
from tests.unit.trainer.reviews import DELIVERY, PRICE, RECOMMEND

pytestmark = pytest.mark.integration

GROUPS = {"توصیه": RECOMMEND, "ارسال": DELIVERY, "قیمت": PRICE}


async def open_suggestions(api: httpx.AsyncClient, dataset: str, timeout_s: float = 90.0) -> list[dict[str, Any]]:
    """The suggestions, once the trainer wrote uncertain ones (just after the fit it makes live)."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = await api.post("/api/suggest_labels/", json={"dataset": dataset, "limit": 50})
        assert r.status_code == 200, r.text
        if any(s["reason"] == "uncertain" for s in r.json()) or time.monotonic() > deadline:
            return list(r.json())
        await asyncio.sleep(0.5)


async def test_kept_inputs_become_suggestions_and_a_report_closes_one(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/create_dataset/", json={"dataset": "pool", "kind": "text", "keep_inputs": True})
    assert r.status_code == 200 and r.json()["keep_inputs"] is True, r.text
    tags = {}
    for title in GROUPS:
        tags[title] = (await api.post("/api/create_tag/", json={"dataset": "pool", "title": title})).json()["tag_id"]
    # Tag calls first: their texts are kept; the reports then start the fit that scores them.
    unseen = [t for texts in GROUPS.values() for t in texts[10:20]]
    tagged = await api.post("/api/tag_texts/", json={"dataset": "pool", "contents": unseen + unseen[:3]})
    assert tagged.status_code == 200, tagged.text
    reports = [{"content": t, "tag_id": tags[title], "positive": True}
               for title, texts in GROUPS.items() for t in texts[:4]]
    assert (await api.post("/api/report_text_tags/", json=reports)).status_code == 200
    trained = await wait_trained(api, "pool")
    versions = (await api.post("/api/list_versions/", json={"dataset": "pool"})).json()
    live = next(v for v in versions if v["version"] == trained["version"])
    # Self-training: the most confident of the kept inputs joined the fit, at most 4 per reported example.
    assert 0 < live["pseudo_labels"] <= 4 * len(reports), live
    suggestions = await open_suggestions(api, "pool")
    assert suggestions, "no suggestions after the fit"
    assert {s["reason"] for s in suggestions} <= {"uncertain", "suspect"}
    uncertain = [s for s in suggestions if s["reason"] == "uncertain"]
    assert uncertain and all(s["content"] in unseen for s in uncertain)  # from the kept tag-call inputs
    assert len({s["item_id"] for s in suggestions}) == len(suggestions)
    info = (await api.post("/api/dataset_info/", json={"dataset": "pool", "tags": False})).json()
    assert info["suggestions"] == len(suggestions)

    # Answer the first uncertain suggestion with the item's true tag: it is no longer open.
    first = uncertain[0]
    truth = next(title for title, texts in GROUPS.items() if first["content"] in texts)
    r = await api.post("/api/report_text_tags/",
                       json=[{"content": first["content"], "tag_id": tags[truth], "positive": True}])
    assert r.status_code == 200 and r.json()[0]["id"] == first["item_id"]  # the kept item, now reported
    left = (await api.post("/api/suggest_labels/", json={"dataset": "pool", "limit": 50})).json()
    assert first["item_id"] not in {s["item_id"] for s in left}
    info = (await api.post("/api/dataset_info/", json={"dataset": "pool", "tags": False})).json()
    assert info["suggestions"] == len(left) < len(suggestions)

    # Search: a reported review asked for verbatim comes first, with its report; the rest by cosine.
    query = GROUPS["ارسال"][0]
    hits = (await api.post("/api/search/", json={"dataset": "pool", "text": query, "limit": 5})).json()
    assert hits[0]["content"] == query and hits[0]["score"] > 0.99
    assert hits[0]["reports"] == [[tags["ارسال"], True]]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


async def test_suggest_and_search_of_another_account_are_404(api: httpx.AsyncClient, stack: Any,
                                                              other_token: str) -> None:
    await api.post("/api/create_dataset/", json={"dataset": "mine-only", "kind": "text"})
    async with httpx.AsyncClient(base_url=stack.url, headers={"Authorization": f"Token {other_token}"}) as other:
        for path, body in [("/api/suggest_labels/", {"dataset": "mine-only"}),
                           ("/api/search/", {"dataset": "mine-only", "text": "سلام"}),
                           ("/api/update_dataset/", {"dataset": "mine-only", "keep_inputs": True})]:
            r = await other.post(path, json=body)
            assert r.status_code == 404, (path, r.text)
