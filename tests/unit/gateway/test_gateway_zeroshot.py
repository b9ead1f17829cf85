"""Zero-shot heads (a text dataset tagged from its tag titles alone) through the real app: dataset_info and
list_versions say how each head was made, and a tag created, renamed or deleted in such a dataset queues a
refit (reason "titles") so the head follows; a head trained from reports is left alone."""

from __future__ import annotations

import json
from typing import Any

from shared.subjects import train_subject
from tests.unit.gateway.harness import Gateway, sql


async def _dataset(gw: Gateway, token: str, name: str, mode: str | None) -> tuple[int, dict[str, int]]:
    """A text dataset with tags a and b and, unless ``mode`` is None, a live version 1 made that way."""
    await gw.post("/api/create_dataset/", {"dataset": name, "kind": "text"}, token)
    tags = {t: (await gw.post("/api/create_tag/", {"dataset": name, "title": t}, token)).json()["tag_id"]
            for t in ("a", "b")}
    url = gw.settings.database_url
    dataset_id = (await sql(url, "SELECT id FROM dataset WHERE name = $1", name))[0]["id"]
    if mode is not None:
        await sql(url, "INSERT INTO head_version (dataset_id, version, model_id, object_name, report_count, mode) "
                       "VALUES ($1, 1, 'm', $2, 0, $3)", dataset_id, f"dataset-{dataset_id}-v1", mode)
        await sql(url, "UPDATE dataset SET head_version = 1, state = 'trained' WHERE id = $1", dataset_id)
    return dataset_id, tags


async def _train_requests(gw: Gateway, dataset_id: int) -> list[dict[str, Any]]:
    rows = await sql(gw.settings.database_url, "SELECT payload FROM outbox WHERE subject = $1 ORDER BY id",
                     train_subject(dataset_id))
    return [json.loads(r["payload"]) for r in rows]  # asyncpg hands jsonb over as text


async def test_dataset_info_and_list_versions_say_how_the_head_was_made(gw: Gateway) -> None:
    token = await gw.token("acme")
    await _dataset(gw, token, "titles", "zero_shot")
    await _dataset(gw, token, "reports", "trained")
    await _dataset(gw, token, "fresh", None)
    for name, mode in (("titles", "zero_shot"), ("reports", "trained"), ("fresh", None)):
        info = (await gw.post("/api/dataset_info/", {"dataset": name}, token)).json()
        assert info["mode"] == mode, info
    listed = (await gw.post("/api/list_versions/", {"dataset": "titles"}, token)).json()
    assert [(v["version"], v["state"], v["mode"]) for v in listed] == [(1, "live", "zero_shot")]
    listed = (await gw.post("/api/list_versions/", {"dataset": "reports"}, token)).json()
    assert [(v["version"], v["mode"]) for v in listed] == [(1, "trained")]


async def test_tag_changes_of_a_zero_shot_dataset_queue_a_refit(gw: Gateway) -> None:
    token = await gw.token("acme")
    dataset_id, tags = await _dataset(gw, token, "titles", "zero_shot")
    assert await _train_requests(gw, dataset_id) == []
    created = await gw.post("/api/create_tag/", {"dataset": "titles", "title": "c"}, token)
    assert created.status_code == 200
    await gw.post("/api/update_tag/", {"tag_id": tags["a"], "title": "a renamed"}, token)
    # Nothing a zero-shot head reads: the same title, the active flag, a threshold override.
    await gw.post("/api/update_tag/", {"tag_id": tags["a"], "title": "a renamed", "active": False}, token)
    await gw.post("/api/update_tag/", {"tag_id": tags["b"], "threshold": 0.7}, token)
    await gw.post("/api/delete_tag/", {"tag_id": tags["b"]}, token)
    requests = await _train_requests(gw, dataset_id)
    assert [(r["dataset_id"], r["reason"], r["force"]) for r in requests] == [(dataset_id, "titles", False)] * 3
    info = (await gw.post("/api/dataset_info/", {"dataset": "titles"}, token)).json()
    assert info["state"] == "trained"  # queued like a report: the live head answers meanwhile


async def test_tag_changes_leave_trained_and_untrained_datasets_alone(gw: Gateway) -> None:
    token = await gw.token("acme")
    for name, mode in (("reports", "trained"), ("fresh", None)):
        dataset_id, tags = await _dataset(gw, token, name, mode)
        await gw.post("/api/create_tag/", {"dataset": name, "title": "c"}, token)
        await gw.post("/api/update_tag/", {"tag_id": tags["a"], "title": "a renamed"}, token)
        await gw.post("/api/delete_tag/", {"tag_id": tags["b"]}, token)
        assert await _train_requests(gw, dataset_id) == [], name
