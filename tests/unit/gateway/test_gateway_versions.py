"""Head versions and thresholds through the real app: list_versions, use_version (the model services get the
version at once), dataset_info's version and thresholds, update_tag's threshold override, top_k and
min_probability on the tag calls, train_dataset's force, and 404s across accounts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from shared.schemas.inference import ItemResult, ScoredTag, TagReply, TagTextsRequest
from shared.schemas.media import TagImagesRequest, TagVideoReply, TagVideoRequest
from shared.schemas.video_jobs import VideoJobRequest
from shared.subjects import TEXT_TAG, VIDEO_JOBS_STREAM, VIDEO_JOBS_SUBJECT, VIDEO_TAG, VISION_TAG
from tests.unit.gateway.harness import Gateway, responder, sql


def _figures(f1: float) -> dict[str, float]:
    return {"recall": f1, "precision": f1, "f1": f1}


async def _seed(gw: Gateway, token: str) -> tuple[int, dict[str, int]]:
    """A text dataset "news" with tags a and b and three stored versions: 1 kept, 2 live, 3 held."""
    await gw.post("/api/create_dataset/", {"dataset": "news", "kind": "text"}, token)
    tags = {t: (await gw.post("/api/create_tag/", {"dataset": "news", "title": t}, token)).json()["tag_id"]
            for t in ("a", "b")}
    url = gw.settings.database_url
    dataset_id = (await sql(url, "SELECT id FROM dataset WHERE name = 'news'"))[0]["id"]
    learned = {1: (0.4, 0.6, 70.0), 2: (0.5, 0.55, 90.0), 3: (0.7, 0.3, 60.0)}
    for version, (a, b, f1) in learned.items():
        per_tag = {str(tags["a"]): {"threshold": a, "evaluation": _figures(f1)},
                   str(tags["b"]): {"threshold": b, "evaluation": _figures(f1 - 10)}}
        await sql(url, "INSERT INTO head_version (dataset_id, version, model_id, object_name, report_count, held, "
                       "evaluation, macro_f1, tags, created_at) VALUES ($1, $2, 'm', $3, $4, $5, $6::jsonb, $7, "
                       "$8::jsonb, now() - make_interval(mins => $9))",
                  dataset_id, version, f"dataset-{dataset_id}-v{version}", 10 * version, version == 3,
                  json.dumps(_figures(f1)), f1 - 5, json.dumps(per_tag), 10 - version)
    await sql(url, "UPDATE dataset SET head_version = 2, state = 'trained', evaluation = $2::jsonb WHERE id = $1",
              dataset_id, json.dumps(_figures(90.0)))
    await sql(url, "UPDATE tag SET threshold = CASE title WHEN 'a' THEN 0.5 ELSE 0.55 END WHERE dataset_id = $1",
              dataset_id)
    return dataset_id, tags


@asynccontextmanager
async def text_service(nats_url: str) -> AsyncIterator[list[TagTextsRequest]]:
    """A fake text_service: records each tag request, answers tag a at 0.9 for every text."""
    seen: list[TagTextsRequest] = []

    async def handle(data: bytes) -> bytes:
        request = TagTextsRequest.model_validate_json(data)
        seen.append(request)
        items = [ItemResult(tags=[ScoredTag(id=request.tags[0].id, title="a", probability=0.9)])
                 for _ in request.texts]
        return TagReply(model_id="m", items=items).model_dump_json().encode()

    async with responder(nats_url, TEXT_TAG, handle):
        yield seen


async def test_list_versions_newest_first_with_their_state(gw: Gateway) -> None:
    token = await gw.token("acme")
    await _seed(gw, token)
    listed = await gw.post("/api/list_versions/", {"dataset": "news"}, token)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert [(v["version"], v["state"], v["report_count"]) for v in body] == [
        (3, "held", 30), (2, "live", 20), (1, "kept", 10)]
    assert body[1]["evaluation"] == _figures(90.0)
    assert body[0]["created"] > body[1]["created"] > body[2]["created"]  # ISO 8601, same zone: sortable
    assert set(body[0]) == {"version", "created", "state", "report_count", "evaluation", "confusion", "mode",
                            "pseudo_labels"}
    assert {v["pseudo_labels"] for v in body} == {0}  # no version here self-trained (nor any before 0009)
    assert {v["mode"] for v in body} == {"trained"}  # every version stored without a mode was fitted from reports

    await gw.post("/api/create_dataset/", {"dataset": "fresh"}, token)
    assert (await gw.post("/api/list_versions/", {"dataset": "fresh"}, token)).json() == []
    info = (await gw.post("/api/dataset_info/", {"dataset": "fresh"}, token)).json()
    assert info["version"] is None


async def test_use_version_rolls_back_and_the_next_tag_call_uses_it(gw: Gateway, nats_url: str) -> None:
    token = await gw.token("acme")
    dataset_id, tags = await _seed(gw, token)
    info = (await gw.post("/api/dataset_info/", {"dataset": "news"}, token)).json()
    assert info["version"] == 2
    assert [(t["id"], t["threshold"]) for t in info["tags"]] == [(tags["a"], 0.5), (tags["b"], 0.55)]

    async with text_service(nats_url) as seen:
        assert (await gw.post("/api/tag_texts/", {"dataset": "news", "contents": ["x"]}, token)).status_code == 200
        rolled = await gw.post("/api/use_version/", {"dataset": "news", "version": 1}, token)
        assert rolled.status_code == 200, rolled.text
        assert (await gw.post("/api/tag_texts/", {"dataset": "news", "contents": ["x"]}, token)).status_code == 200
    assert [r.head.version for r in seen] == [2, 1]  # the cached view went with the commit
    body = rolled.json()
    assert body["version"] == 1 and body["state"] == "trained"
    assert body["evaluation"] == {"recall": 70.0, "precision": 70.0}
    assert [(t["id"], t["threshold"], t["evaluation"]["f1"]) for t in body["tags"]] == [
        (tags["a"], 0.4, 70.0), (tags["b"], 0.6, 60.0)]
    again = (await gw.post("/api/dataset_info/", {"dataset": "news"}, token)).json()
    assert [(t["threshold"], t["evaluation"]) for t in again["tags"]] == [
        (t["threshold"], t["evaluation"]) for t in body["tags"]]

    # A held version made live is held no more; the one it replaced is kept.
    await sql(gw.settings.database_url, "UPDATE dataset SET state_reason = 'version 3 held' WHERE id = $1", dataset_id)
    promoted = (await gw.post("/api/use_version/", {"dataset": "news", "version": 3}, token)).json()
    assert promoted["version"] == 3 and [t["threshold"] for t in promoted["tags"]] == [0.7, 0.3]
    listed = (await gw.post("/api/list_versions/", {"dataset": "news"}, token)).json()
    assert [(v["version"], v["state"]) for v in listed] == [(3, "live"), (2, "kept"), (1, "kept")]
    reason = await sql(gw.settings.database_url, "SELECT state_reason FROM dataset WHERE id = $1", dataset_id)
    assert reason[0]["state_reason"] is None


async def test_versions_are_404_for_unknown_versions_and_other_accounts(gw: Gateway) -> None:
    token, other = await gw.token("acme"), await gw.token("rival")
    _, tags = await _seed(gw, token)
    missing = await gw.post("/api/use_version/", {"dataset": "news", "version": 9}, token)
    assert missing.status_code == 404 and missing.json()["error"] == "version_not_found"
    await sql(gw.settings.database_url, "UPDATE dataset SET model_id = 'm2' WHERE name = 'news'")  # a new model
    other_model = await gw.post("/api/use_version/", {"dataset": "news", "version": 1}, token)
    assert other_model.status_code == 400 and other_model.json()["error"] == "version_model_mismatch"
    for path, body in (("/api/list_versions/", {"dataset": "news"}),
                       ("/api/use_version/", {"dataset": "news", "version": 1})):
        answer = await gw.post(path, body, other)
        assert answer.status_code == 404 and answer.json()["error"] == "dataset_not_found", answer.text
    stolen = await gw.post("/api/update_tag/", {"tag_id": tags["a"], "threshold": 0.9}, other)
    assert stolen.status_code == 404
    for version in (0, -1, "1", 1.5):
        bad = await gw.post("/api/use_version/", {"dataset": "news", "version": version}, token)
        assert bad.status_code == 422, (version, bad.text)
    info = (await gw.post("/api/dataset_info/", {"dataset": "news"}, token)).json()
    assert info["version"] == 2 and info["tags"][0]["threshold"] == 0.5  # nothing changed


async def test_update_tag_threshold_overrides_the_learned_one_until_reset(gw: Gateway, nats_url: str) -> None:
    token = await gw.token("acme")
    _, tags = await _seed(gw, token)
    a = tags["a"]

    async def threshold_in_force() -> float | None:
        info = (await gw.post("/api/dataset_info/", {"dataset": "news"}, token)).json()
        return next(t["threshold"] for t in info["tags"] if t["id"] == a)  # type: ignore[no-any-return]

    async with text_service(nats_url) as seen:
        set_ = await gw.post("/api/update_tag/", {"tag_id": a, "threshold": 0.8}, token)
        assert set_.status_code == 200, set_.text
        assert set_.json() == {"title": "a", "tag_id": a, "active": True}
        assert await threshold_in_force() == 0.8
        await gw.post("/api/tag_texts/", {"dataset": "news", "contents": ["x"]}, token)
        # Absent leaves the override; a rollback keeps it too (the learned one under it changes).
        await gw.post("/api/update_tag/", {"tag_id": a, "title": "a2"}, token)
        await gw.post("/api/use_version/", {"dataset": "news", "version": 1}, token)
        assert await threshold_in_force() == 0.8
        await gw.post("/api/tag_texts/", {"dataset": "news", "contents": ["x"]}, token)
        reset = await gw.post("/api/update_tag/", {"tag_id": a, "threshold": None}, token)
        assert reset.status_code == 200
        assert await threshold_in_force() == 0.4  # version 1's learned threshold
        await gw.post("/api/tag_texts/", {"dataset": "news", "contents": ["x"]}, token)
    overrides = [{t.id: t.threshold for t in request.tags} for request in seen]
    assert overrides == [{a: 0.8, tags["b"]: None}, {a: 0.8, tags["b"]: None}, {a: None, tags["b"]: None}]
    assert [t.title for t in seen[1].tags] == ["a2", "b"]

    for bad in (0, 1, 1.5, -0.2, "0.5", float("nan")):
        answer = await gw.client.post("/api/update_tag/", content=json.dumps({"tag_id": a, "threshold": bad}),
                                      headers={"Authorization": f"Token {token}", "Content-Type": "application/json"})
        assert answer.status_code == 422, (bad, answer.text)
        assert "threshold" in answer.json()["detail"]


@pytest.mark.parametrize("options", [{"top_k": 1}, {"min_probability": 0.3}, {"top_k": 2, "min_probability": 0}])
async def test_top_k_and_min_probability_reach_every_model_service(
    gw: Gateway, nats_url: str, options: dict[str, Any],
) -> None:
    token = await gw.token("acme")
    await gw.post("/api/create_dataset/", {"dataset": "photos", "kind": "image"}, token)
    await gw.post("/api/create_tag/", {"dataset": "photos", "title": "bridge"}, token)
    await gw.post("/api/create_tag/", {"dataset": "texts", "title": "t"}, token)
    seen: list[Any] = []

    async def vision(data: bytes) -> bytes:
        request = TagImagesRequest.model_validate_json(data)
        seen.append(request)
        return TagReply(model_id="m", items=[ItemResult(tags=[]) for _ in request.images]).model_dump_json().encode()

    async def video(data: bytes) -> bytes:
        seen.append(TagVideoRequest.model_validate_json(data))
        return TagVideoReply(model_id="m", frames=[]).model_dump_json().encode()

    async with text_service(nats_url) as texts, responder(nats_url, VISION_TAG, vision), \
            responder(nats_url, VIDEO_TAG, video):
        answers = [
            await gw.post("/api/tag_texts/", {"dataset": "texts", "contents": ["x"], **options}, token),
            await gw.post("/api/tag_images/", {"dataset": "photos", "image_urls": ["https://e.org/a.jpg"],
                                               **options}, token),
            await gw.client.post("/api/tag_images/", headers={"Authorization": f"Token {token}"},
                                 data={"dataset": "photos", **{k: str(v) for k, v in options.items()}},
                                 files=[("image_file", ("a.png", b"\x89PNG....", "image/png"))]),
            await gw.post("/api/tag_video_frames/", {"dataset": "photos", "video_urls": ["https://e.org/v.mp4"],
                                                     **options}, token),
        ]
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    expected = (options.get("top_k"), options.get("min_probability"))
    assert [(r.top_k, r.min_probability) for r in [*texts, *seen]] == [expected] * 4


async def test_bad_top_k_or_min_probability_is_422(gw: Gateway) -> None:
    token = await gw.token("acme")
    await gw.post("/api/create_tag/", {"dataset": "texts", "title": "t"}, token)
    for bad in ({"top_k": 0}, {"top_k": "2"}, {"top_k": 1.5}, {"min_probability": 1.5}, {"min_probability": -0.1},
                {"min_probability": "0.5"}):
        answer = await gw.post("/api/tag_texts/", {"dataset": "texts", "contents": ["x"], **bad}, token)
        assert answer.status_code == 422, (bad, answer.text)
        assert next(iter(bad)) in answer.json()["detail"]
    form = await gw.client.post("/api/tag_images/", headers={"Authorization": f"Token {token}"},
                                data={"dataset": "photos", "top_k": "0"},
                                files=[("image_file", ("a.png", b"\x89PNG....", "image/png"))])
    assert form.status_code == 422 and "top_k" in form.json()["detail"]


async def test_train_dataset_force_reaches_the_trainer(gw: Gateway) -> None:
    token = await gw.token("acme")
    await gw.post("/api/create_tag/", {"dataset": "news", "title": "t"}, token)
    for body in ({"dataset": "news"}, {"dataset": "news", "force": True}):
        answer = await gw.post("/api/train_dataset/", body, token)
        assert answer.status_code == 200 and answer.json() == {"dataset": "news", "state": "waiting"}
    rows = await sql(gw.settings.database_url, "SELECT payload FROM outbox ORDER BY id")
    assert [json.loads(r["payload"])["force"] for r in rows] == [False, True]
    assert (await gw.post("/api/train_dataset/", {"dataset": "news", "force": "yes"}, token)).status_code == 422


async def test_an_async_video_job_carries_top_k_and_min_probability(gw: Gateway) -> None:
    token = await gw.token("acme")
    await gw.post("/api/create_dataset/", {"dataset": "photos", "kind": "image"}, token)
    await gw.post("/api/create_tag/", {"dataset": "photos", "title": "bridge"}, token)
    queued = await gw.post("/api/tag_video_frames/", {"dataset": "photos", "video_urls": ["https://e.org/v.mp4"],
                                                      "async": True, "top_k": 3, "min_probability": 0.25}, token)
    assert queued.status_code == 200, queued.text
    message = await gw.state.bus.js.get_last_msg(VIDEO_JOBS_STREAM, VIDEO_JOBS_SUBJECT)
    try:
        job = VideoJobRequest.model_validate_json(message.data or b"")
        assert job.job_id == queued.json()["job_id"]
        assert (job.top_k, job.min_probability) == (3, 0.25)
    finally:
        await gw.state.bus.js.delete_msg(VIDEO_JOBS_STREAM, message.seq or 0)  # no video_service takes it here
