"""dataset_info's and list_versions' out-of-fold confusion counts: the live version's (null before any fit),
each stored version's own, and use_version brings the chosen version's along."""

from __future__ import annotations

import json
from typing import Any

from tests.unit.gateway.harness import Gateway, sql
from tests.unit.gateway.test_gateway_versions import _seed


def _stored(tags: dict[str, int]) -> dict[int, dict[str, Any] | None]:
    """What the trainer stored per version: 1 multi-label counts, 2 an exclusive matrix, 3 none (before 0006)."""
    a, b = tags["a"], tags["b"]
    return {
        1: {"exclusive": False, "tag_ids": [a, b],
            "counts": [{"tp": 5, "fp": 1, "fn": 2, "tn": 12}, None]},
        2: {"exclusive": True, "tag_ids": [a, b], "matrix": [[6, 1, 1], [0, 7, 2], [1, 0, 3]]},
        3: None,
    }


async def test_confusion_is_null_before_training_and_the_live_versions_after(gw: Gateway) -> None:
    token = await gw.token("acme")
    await gw.post("/api/create_dataset/", {"dataset": "fresh", "kind": "text"}, token)
    await gw.post("/api/create_tag/", {"dataset": "fresh", "title": "x"}, token)
    for flag in (True, False):
        info = (await gw.post("/api/dataset_info/", {"dataset": "fresh", "tags": flag}, token)).json()
        assert "confusion" in info and info["confusion"] is None

    dataset_id, tags = await _seed(gw, token)
    stored = _stored(tags)
    for version, confusion in stored.items():
        await sql(gw.settings.database_url,
                  "UPDATE head_version SET confusion = $3::jsonb WHERE dataset_id = $1 AND version = $2",
                  dataset_id, version, None if confusion is None else json.dumps(confusion))
    for flag in (True, False):
        info = (await gw.post("/api/dataset_info/", {"dataset": "news", "tags": flag}, token)).json()
        assert info["version"] == 2 and info["confusion"] == stored[2]
    listed = (await gw.post("/api/list_versions/", {"dataset": "news"}, token)).json()
    assert {v["version"]: v["confusion"] for v in listed} == stored

    for version in (1, 3, 2):  # use_version answers dataset_info with the version made live, its own counts
        answer = await gw.post("/api/use_version/", {"dataset": "news", "version": version}, token)
        assert answer.status_code == 200, answer.text
        assert answer.json()["confusion"] == stored[version]
        info = (await gw.post("/api/dataset_info/", {"dataset": "news"}, token)).json()
        assert (info["version"], info["confusion"]) == (version, stored[version])
