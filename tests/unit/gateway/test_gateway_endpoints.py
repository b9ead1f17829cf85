"""Every endpoint's success answer has the reference's shape, with and without the trailing slash."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import numpy as np
from PIL import Image

from shared.logging import CORRELATION_HEADER
from shared.schemas.inference import ItemResult, ScoredTag, TagReply, TagTextsRequest, pack_vectors
from shared.schemas.media import (
    EmbedImagesReply,
    EmbedImagesRequest,
    ImageEmbedding,
    TagImagesRequest,
    TagVideoReply,
    TagVideoRequest,
    VideoFrame,
)
from shared.subjects import BLOBS_BUCKET, TEXT_TAG, VIDEO_TAG, VISION_EMBED, VISION_TAG
from tests.unit.gateway.harness import Gateway, eventually, png_bytes, responder, sql

REVIEW_BUY = "ارزش خریدنش رو بی شک داره"
REVIEW_BAD = "اصلا اصلا کیفیت نداره رنگش بااین عکس زمین تاآسمون فرق داره"


async def _text_dataset(gw: Gateway, token: str) -> tuple[int, int]:
    """Dataset "digikala" with tags "توصیه خرید" and "عدم رضایت"; returns their ids."""
    buy = (await gw.post("/api/create_tag/", {"dataset": "digikala", "title": "توصیه خرید"}, token)).json()
    bad = (await gw.post("/api/create_tag/", {"dataset": "digikala", "title": "عدم رضایت"}, token)).json()
    return buy["tag_id"], bad["tag_id"]


async def test_dataset_calls_answer_the_reference_shapes(gw: Gateway) -> None:
    token = await gw.token("acme")

    created = await gw.post(
        "/api/create_dataset/", {"dataset": "iran", "title": "لحظه", "kind": "image"}, token
    )
    assert created.status_code == 200
    assert created.json() == {"dataset": "iran", "title": "لحظه", "kind": "image", "state": "untrained",
                              "keep_inputs": False}

    tag = await gw.post("/api/create_tag/", {"dataset": "iran", "title": "New Place"}, token)
    assert tag.status_code == 200
    tag_id = tag.json()["tag_id"]
    assert tag.json() == {"title": "New Place", "tag_id": tag_id, "active": True}

    updated = await gw.post(
        "/api/update_tag/",
        {"dataset": "iran", "tag_id": tag_id, "title": "Old Place", "active": False},
        token,
    )
    assert updated.json() == {"title": "Old Place", "tag_id": tag_id, "active": False}

    listed = await gw.post("/api/list_datasets/", {}, token)
    assert listed.json() == [{"dataset": "iran", "title": "لحظه", "kind": "image", "state": "untrained",
                              "keep_inputs": False}]

    info = await gw.post("/api/dataset_info/", {"dataset": "iran", "tags": True}, token)
    assert info.json() == {
        "title": "لحظه",
        "state": "untrained",
        "report_count": 0,
        "data_count": 0,
        "evaluation": None,
        "tags": [{"title": "Old Place", "id": tag_id, "reports": 0, "predictions": 0, "evaluation": None,
                  "threshold": None}],
        "version": None,
        "suggestions": 0,
        "confusion": None,
        "mode": None,
    }
    without_tags = await gw.post("/api/dataset_info/", {"dataset": "iran", "tags": False}, token)
    assert "tags" not in without_tags.json()

    trained = await gw.post("/api/train_dataset/", {"dataset": "iran"}, token)
    assert trained.json() == {"dataset": "iran", "state": "waiting"}
    state = await gw.post("/api/dataset_info/", {"dataset": "iran", "tags": False}, token)
    assert state.json()["state"] == "waiting"

    deleted = await gw.post("/api/delete_tag/", {"tag_id": tag_id}, token)
    assert deleted.json() == {"dataset": "iran", "deleted_reports": 0}
    after = await gw.post("/api/dataset_info/", {"dataset": "iran"}, token)
    assert after.json()["tags"] == []


async def test_dataset_info_reports_evaluation_from_the_trainer(gw: Gateway) -> None:
    token = await gw.token("acme")
    tag_id, _ = await _text_dataset(gw, token)
    await sql(
        gw.settings.database_url,
        "UPDATE dataset SET state='trained', evaluation=$1::jsonb",
        '{"recall": 87, "precision": 91.0, "f1": 88.9}',
    )
    await sql(
        gw.settings.database_url,
        """UPDATE tag SET evaluation='{"recall": 80.3, "precision": 91.4, "f1": 86.0}' WHERE id=$1""",
        tag_id,
    )
    response = await gw.post("/api/dataset_info/", {"dataset": "digikala", "tags": True}, token)
    info = response.json()
    assert info["state"] == "trained"
    assert list(info)[:6] == ["title", "state", "report_count", "data_count", "evaluation", "tags"]
    assert info["version"] is None  # no head version yet (fields of the human loop follow the reference's)
    # Figures are printed as stored: 87 as in the reference's example, 91.0 and 86.0 as they were.
    assert '"evaluation":{"recall":87,"precision":91.0}' in response.text
    assert '"f1":86.0}' in response.text
    assert info["tags"][0]["evaluation"] == {"recall": 80.3, "precision": 91.4, "f1": 86.0}
    assert info["tags"][1]["evaluation"] is None


async def test_every_endpoint_answers_without_the_trailing_slash(gw: Gateway) -> None:
    token = await gw.token("acme")
    assert (await gw.post("/api/create_dataset", {"dataset": "d", "kind": "text"}, token)).status_code == 200
    assert (await gw.post("/api/list_datasets", {}, token)).json()[0]["dataset"] == "d"
    tag_id = (await gw.post("/api/create_tag", {"dataset": "d", "title": "t"}, token)).json()["tag_id"]
    calls: list[tuple[str, object]] = [
        ("/api/update_tag", {"tag_id": tag_id, "title": "u", "active": False}),
        ("/api/report_text_tags", [{"content": "متن", "tag_id": tag_id, "positive": True}]),
        ("/api/tag_texts", {"dataset": "d", "contents": ["x"]}),  # no active tag: answered without a model
        ("/api/dataset_info", {"dataset": "d"}),
        ("/api/train_dataset", {"dataset": "d"}),
        ("/api/delete_tag", {"tag_id": tag_id}),
    ]
    for path, body in calls:
        response = await gw.post(path, body, token)
        assert response.status_code == 200, (path, response.text)
    unknown = await gw.post("/api/tag_texts", {"dataset": "d", "contents": ["x"]}, token)
    assert unknown.json() == [{"content": "x", "tags": [{"id": 0, "probability": 1, "title": "ناآشنا"}]}]
    for path in ("/api/tag_images", "/api/tag_video_frames"):  # routed, and refused for the empty list
        response = await gw.post(path, {"dataset": "d", "image_urls": [], "video_urls": []}, token)
        assert response.status_code == 400, response.text
    assert (await gw.post("/api/report_image_tags", [], token)).status_code == 400


async def test_report_text_tags_dedups_persian_variants_and_replaces_labels(gw: Gateway) -> None:
    token = await gw.token("acme")
    buy, bad = await _text_dataset(gw, token)
    persian = "پیشنهاد می‌کنم از این بخرید، خیلی عالیه و کیفیتش ۱۰۰٪ تضمینی"
    arabic = "  پيشنهاد می‌کنم از این بخرید،   خيلی عالیه و کیفیتش ۱۰۰٪ تضمينی "  # Arabic ي, extra spaces

    first = await gw.post(
        "/api/report_text_tags/", [{"content": persian, "tag_id": buy, "positive": True}], token
    )
    assert first.status_code == 200
    item_id = first.json()[0]["id"]
    assert first.json() == [{"report": f"[[{buy},true]]", "id": item_id}]

    # Same text in Arabic spelling: the same item; a second tag is added, the first label replaced.
    second = await gw.post(
        "/api/report_text_tags/",
        [
            {"content": arabic, "tag_id": bad, "positive": True},
            {"content": "كاملا راضی هستم", "tag_id": buy, "positive": True},  # Arabic ك
            {"content": arabic, "tag_id": buy, "positive": False},
        ],
        token,
    )
    assert second.status_code == 200
    answer = second.json()
    assert answer[0]["id"] == item_id and answer[2]["id"] == item_id
    assert answer[1]["id"] != item_id
    expected = f"[[{buy},false],[{bad},true]]"
    assert answer[0]["report"] == expected and answer[2]["report"] == expected
    assert answer[1]["report"] == f"[[{buy},true]]"
    assert json.loads(answer[0]["report"]) == [[buy, False], [bad, True]]

    info = (await gw.post("/api/dataset_info/", {"dataset": "digikala"}, token)).json()
    assert info["data_count"] == 2
    assert info["report_count"] == 3
    assert {t["id"]: t["reports"] for t in info["tags"]} == {buy: 2, bad: 1}

    # The same Persian text reported with the Persian ک form is still the same item.
    third = await gw.post(
        "/api/report_text_tags/", [{"content": "کاملا راضی هستم", "tag_id": bad, "positive": False}], token
    )
    assert third.json() == [{"report": f"[[{buy},true],[{bad},false]]", "id": answer[1]["id"]}]


async def test_tag_texts_asks_text_service_and_counts_predictions(gw: Gateway, nats_url: str) -> None:
    token = await gw.token("acme")
    buy, bad = await _text_dataset(gw, token)
    await gw.post("/api/update_tag/", {"tag_id": bad, "active": False}, token)
    seen: list[TagTextsRequest] = []

    async def text_service(data: bytes) -> bytes:
        request = TagTextsRequest.model_validate_json(data)
        seen.append(request)
        items = [
            ItemResult(
                tags=[
                    ScoredTag(id=buy, title="توصیه خرید", probability=0.996),
                    ScoredTag(id=buy + 100, title="دیگر", probability=0.874),
                ]
            )
            if "خرید" in text
            else ItemResult(tags=[ScoredTag(id=0, title="ناآشنا", probability=1.0)])
            for text in request.texts
        ]
        return TagReply(model_id="test-model", items=items).model_dump_json().encode()

    headers: list[dict[str, str]] = []
    async with responder(nats_url, TEXT_TAG, text_service, headers):
        response = await gw.post(
            "/api/tag_texts/",
            {"dataset": "digikala", "contents": [REVIEW_BUY, REVIEW_BAD]},
            token,
            headers={"X-Request-Id": "trace-me-1"},
        )
        again = await gw.post("/api/tag_texts", {"dataset": "digikala", "contents": [REVIEW_BUY]}, token)
    assert response.status_code == 200, response.text
    assert response.json() == [
        {
            "content": REVIEW_BUY,
            "tags": [
                {"id": buy, "probability": 1, "title": "توصیه خرید"},
                {"id": buy + 100, "probability": 0.87, "title": "دیگر"},
            ],
        },
        {"content": REVIEW_BAD, "tags": [{"id": 0, "probability": 1, "title": "ناآشنا"}]},
    ]
    assert '"probability":1,' in response.text  # printed as 1, not 1.0, like the reference
    assert [list(element) for element in response.json()] == [["content", "tags"]] * 2
    assert list(response.json()[0]["tags"][0]) == ["id", "probability", "title"]
    assert again.status_code == 200
    # The request id travels with the model request, so the service's logs carry it too.
    assert headers[0][CORRELATION_HEADER] == "trace-me-1"
    # The service got the dataset's head reference and only its active tags.
    assert seen[0].head.version is None
    assert [t.id for t in seen[0].tags] == [buy]
    info = (await gw.post("/api/dataset_info/", {"dataset": "digikala"}, token)).json()
    assert {t["id"]: t["predictions"] for t in info["tags"]} == {buy: 2, bad: 0}
    kind = await sql(gw.settings.database_url, "SELECT kind FROM dataset WHERE name='digikala'")
    assert kind[0]["kind"] == "text"


async def test_concurrent_tagging_counts_every_prediction(gw: Gateway, nats_url: str) -> None:
    """Many tagging calls at once over the same tags: no deadlock, no lost count (read before and after
    the counters reach Postgres)."""
    token = await gw.token("acme")
    buy, bad = await _text_dataset(gw, token)

    async def text_service(data: bytes) -> bytes:
        request = TagTextsRequest.model_validate_json(data)
        tags = [ScoredTag(id=bad, title="عدم رضایت", probability=0.6), ScoredTag(id=buy, title="توصیه خرید",
                                                                              probability=0.9)]
        return TagReply(model_id="m", items=[ItemResult(tags=tags) for _ in request.texts]).model_dump_json().encode()

    async with responder(nats_url, TEXT_TAG, text_service):
        responses = await asyncio.gather(*(
            gw.post("/api/tag_texts/", {"dataset": "digikala", "contents": [REVIEW_BUY, REVIEW_BAD]}, token)
            for _ in range(40)
        ))
    assert [r.status_code for r in responses] == [200] * 40
    info = (await gw.post("/api/dataset_info/", {"dataset": "digikala"}, token)).json()
    assert {t["id"]: t["predictions"] for t in info["tags"]} == {buy: 80, bad: 80}

    async def stored() -> dict[int, int]:
        rows = await sql(gw.settings.database_url, "SELECT id, predictions FROM tag ORDER BY id")
        return {r["id"]: r["predictions"] for r in rows}

    # The counter writes every second: wait for it rather than reach into it.
    assert await eventually(lambda: _equal(stored(), {buy: 80, bad: 80}), timeout_s=5.0)
    info = (await gw.post("/api/dataset_info/", {"dataset": "digikala"}, token)).json()
    assert {t["id"]: t["predictions"] for t in info["tags"]} == {buy: 80, bad: 80}  # nothing counted twice


async def _equal(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def test_tag_images_by_url_and_by_upload(gw: Gateway, nats_url: str) -> None:
    token = await gw.token("acme")
    await gw.post("/api/create_dataset/", {"dataset": "iran", "kind": "image"}, token)
    milad = (await gw.post("/api/create_tag/", {"dataset": "iran", "title": "برج میلاد"}, token)).json()[
        "tag_id"
    ]
    photo = png_bytes(1)
    noise = io.BytesIO()  # incompressible: over the 256 KiB inline limit
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)).save(noise, "PNG")
    big = noise.getvalue()
    assert len(big) > 256 * 1024
    blob_contents: list[bytes] = []
    inline_contents: list[bytes] = []
    nc = await nats.connect(nats_url)
    store = await nc.jetstream().object_store(BLOBS_BUCKET)

    async def vision_service(data: bytes) -> bytes:
        request = TagImagesRequest.model_validate_json(data)
        items = []
        for image in request.images:
            if image.blob_key:
                blob_contents.append((await store.get(image.blob_key)).data or b"")
            if image.data:
                inline_contents.append(image.data)
            if image.url and "broken" in image.url:
                items.append(
                    ItemResult(error="could not fetch the image (HTTP 404)", error_code="fetch_failed")
                )
            else:
                items.append(ItemResult(tags=[ScoredTag(id=milad, title="برج میلاد", probability=0.991)]))
        return TagReply(model_id="test-vision", items=items).model_dump_json().encode()

    try:
        async with responder(nats_url, VISION_TAG, vision_service):
            urls = ["https://example.org/milad.jpg", "https://example.org/broken.jpg"]
            by_url = await gw.post("/api/tag_images/", {"dataset": "iran", "image_urls": urls}, token)
            upload = await gw.client.post(
                "/api/tag_images/",
                headers={"Authorization": f"Token {token}"},
                data={"dataset": "iran"},
                files=[("image_file", ("milad.png", photo, "image/png")),
                       ("image_file", ("big.png", big, "image/png"))],
            )
    finally:
        await nc.close()
    assert by_url.status_code == 200, by_url.text
    assert by_url.json() == [
        {"image_url": urls[0], "tags": [{"id": milad, "probability": 0.99, "title": "برج میلاد"}]},
        {"image_url": urls[1], "error": "could not fetch the image (HTTP 404)", "tags": []},
    ]
    assert [list(element) for element in by_url.json()] == [["image_url", "tags"], ["image_url", "error", "tags"]]
    assert upload.status_code == 200, upload.text
    assert upload.json() == [
        {"image_file": name, "tags": [{"id": milad, "probability": 0.99, "title": "برج میلاد"}]}
        for name in ("milad.png", "big.png")
    ]
    assert inline_contents == [photo]  # small: inline in the message
    assert blob_contents == [big]  # large: through the object store (NATS payloads stay under 1 MiB)


async def test_tag_video_frames_by_url_and_by_upload(gw: Gateway, nats_url: str) -> None:
    token = await gw.token("acme")
    tag_id = (await gw.post("/api/create_tag/", {"dataset": "iran", "title": "پل طبیعت"}, token)).json()[
        "tag_id"
    ]
    seen: list[TagVideoRequest] = []

    async def video_service(data: bytes) -> bytes:
        request = TagVideoRequest.model_validate_json(data)
        seen.append(request)
        frames = [
            VideoFrame(frame=3, time="0:00:00", tags=[ScoredTag(id=0, title="ناآشنا", probability=1.0)]),
            VideoFrame(
                frame=585, time="0:00:23", tags=[ScoredTag(id=tag_id, title="پل طبیعت", probability=0.99)]
            ),
        ]
        return TagVideoReply(model_id="test-video", frames=frames).model_dump_json().encode()

    url = "https://example.org/79959.mp4"
    async with responder(nats_url, VIDEO_TAG, video_service):
        by_url = await gw.post(
            "/api/tag_video_frames/",
            {"dataset": "iran", "every_ms": 100, "duration": 25, "min_frame_diff": 50, "video_urls": [url]},
            token,
        )
        upload = await gw.client.post(
            "/api/tag_video_frames",
            headers={"Authorization": f"Token {token}"},
            data={"dataset": "iran", "every_ms": "250"},
            files=[("video_file", ("clip.mp4", b"\x00" * 2048, "video/mp4"))],
        )
    frames = [
        {"frame": 3, "time": "0:00:00", "tags": [{"id": 0, "probability": 1, "title": "ناآشنا"}]},
        {"frame": 585, "time": "0:00:23", "tags": [{"id": tag_id, "probability": 0.99, "title": "پل طبیعت"}]},
    ]
    assert by_url.status_code == 200, by_url.text
    assert by_url.json() == [{"video_url": url, "frames": frames}]
    assert list(by_url.json()[0]["frames"][0]) == ["frame", "time", "tags"]
    assert upload.status_code == 200, upload.text
    assert upload.json() == [{"video_file": "clip.mp4", "frames": frames}]
    assert (seen[0].every_ms, seen[0].duration_s, seen[0].min_frame_diff) == (100, 25, 50)
    assert seen[0].video.url == url
    # A 2 KiB upload travels inline in the message (large ones go through the object store).
    assert (seen[1].every_ms, seen[1].duration_s, seen[1].video.data) == (250, None, b"\x00" * 2048)


async def test_report_image_tags_keeps_copy_and_embedding(gateway_factory: Callable[..., Any]) -> None:
    """vision_service (a test peer on the real bus) embeds; the gateway keeps copy, hash and vector."""
    async with gateway_factory(outbox_sweep_s=60) as gw:  # no sweep holds a connection meanwhile
        await _report_images(gw)


async def _report_images(gw: Gateway) -> None:
    token = await gw.token("acme")
    milad = (await gw.post("/api/create_tag/", {"dataset": "iran", "title": "برج میلاد"}, token)).json()[
        "tag_id"
    ]
    copy = png_bytes(2)
    vector = np.arange(4, dtype=np.float32) / 4
    seen: list[EmbedImagesRequest] = []
    while_embedding: list[tuple[int, str]] = []

    async def embed(data: bytes) -> bytes:
        request = EmbedImagesRequest.model_validate_json(data)
        seen.append(request)
        kind = await sql(gw.settings.database_url, "SELECT kind FROM dataset WHERE name = 'iran'")
        while_embedding.append((gw.state.engine.pool.checkedout(), kind[0]["kind"]))
        items = [ImageEmbedding(vector=base64.b64encode(pack_vectors(vector[None])), sha256="ab" * 32,
                                copy_bytes=base64.b64encode(copy), copy_media_type="image/jpeg")
                 for _ in request.images]
        return EmbedImagesReply(model_id="img-test", dim=4, items=items).model_dump_json().encode()

    urls = ["https://example.org/milad.png", "https://example.org/copy.png"]
    async with responder(gw.settings.nats_url, VISION_EMBED, embed):
        response = await gw.post(
            "/api/report_image_tags/",
            [{"image_url": urls[0], "tag_id": milad, "positive": True},
             {"image_url": urls[1], "tag_id": milad, "positive": False}],
            token,
        )
    assert response.status_code == 200, response.text
    assert [m.url for m in seen[0].images] == urls and seen[0].keep_copy is True
    # While vision_service works the gateway holds no pooled connection, and the kind it fixed is committed.
    assert while_embedding == [(0, "image")]
    item_id = response.json()[0]["id"]
    # Same bytes (same hash) at two URLs: one item; the later report wins.
    assert response.json() == [{"report": f"[[{milad},false]]", "id": item_id}] * 2
    rows = await sql(gw.settings.database_url, "SELECT kind, media, media_type, content_hash FROM data_item")
    assert [(r["kind"], bytes(r["media"]), r["media_type"], r["content_hash"]) for r in rows] == [
        ("image", copy, "image/jpeg", "ab" * 32)
    ]
    stored = await sql(gw.settings.database_url, "SELECT item_id, model_id, dim, vector FROM embedding")
    assert [(r["item_id"], r["model_id"], r["dim"]) for r in stored] == [(item_id, "img-test", 4)]
    assert np.array_equal(np.frombuffer(stored[0]["vector"], dtype=np.float32), vector)


async def test_probes_metrics_docs_and_request_id(gw: Gateway) -> None:
    assert (await gw.client.get("/healthz")).json() == {"status": "ok"}
    ready = await gw.client.get("/readyz")
    assert ready.status_code == 200
    token = await gw.token("acme")
    answered = await gw.post("/api/list_datasets/", {}, token, headers={"X-Request-Id": "client-id-42"})
    assert answered.headers["X-Request-Id"] == "client-id-42"
    fresh = await gw.post("/api/list_datasets/", {}, token)
    assert len(fresh.headers["X-Request-Id"]) >= 8
    metrics = (await gw.client.get("/metrics")).text
    assert (
        'kashf_gateway_requests_total{method="POST",route="/api/list_datasets",status="200"} 2.0' in metrics
    )
    spec = (await gw.client.get("/openapi.json")).json()
    body_ref = spec["paths"]["/api/tag_texts/"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    schema = spec["components"]["schemas"][body_ref["$ref"].rsplit("/", 1)[1]]
    assert schema["examples"][0]["dataset"] == "digikala"
    assert "/api/tag_texts" not in spec["paths"]  # the slash-less twin is not documented twice
    assert (await gw.client.get("/docs")).status_code == 200
