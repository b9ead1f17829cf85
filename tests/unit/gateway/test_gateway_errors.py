"""Every row of the SPEC's error table, produced by a real request; errors are always {"error", "detail"}."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from shared.schemas.media import EmbedImagesReply, ImageEmbedding
from shared.subjects import TEXT_TAG, VIDEO_TAG, VISION_EMBED
from tests.unit.gateway.harness import Gateway, responder


def assert_error(response: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    for needle in needles:
        assert needle in body["detail"], body
    assert "Traceback" not in response.text and "127.0.0.1" not in response.text
    return dict(body)


async def test_400_for_rules_broken_by_well_formed_json(gw: Gateway) -> None:
    token = await gw.token("acme")
    await gw.post("/api/create_dataset/", {"dataset": "iran", "kind": "image"}, token)
    place = (await gw.post("/api/create_tag/", {"dataset": "iran", "title": "میدان آزادی"}, token)).json()[
        "tag_id"
    ]

    wrong_kind = await gw.post(
        "/api/report_text_tags/", [{"content": "متن", "tag_id": place, "positive": True}], token
    )
    assert assert_error(wrong_kind, 400, "holds images, not texts")["error"] == "wrong_dataset_kind"
    assert_error(
        await gw.post("/api/tag_texts/", {"dataset": "iran", "contents": ["x"]}, token), 400, "holds images"
    )
    assert_error(await gw.post("/api/report_text_tags/", [], token), 400, "reports is empty")
    assert_error(
        await gw.post("/api/tag_images/", {"dataset": "iran", "image_urls": []}, token), 400, "empty"
    )
    negative = {"dataset": "iran", "every_ms": -100, "video_urls": ["https://example.org/v.mp4"]}
    assert_error(await gw.post("/api/tag_video_frames/", negative, token), 400, "every_ms")
    assert_error(await gw.post("/api/create_dataset/", {"dataset": "iran"}, token), 400, "already exists")


async def test_401_for_missing_wrong_or_revoked_tokens(gw: Gateway) -> None:
    body = {"dataset": "iran"}
    assert_error(await gw.post("/api/dataset_info/", body, None), 401, "Authorization")
    assert_error(await gw.post("/api/dataset_info/", body, "not-a-real-token"), 401, "invalid")
    bearer = await gw.client.post("/api/dataset_info/", json=body, headers={"Authorization": "Bearer abc"})
    assert assert_error(bearer, 401)["error"] == "unauthorized"
    assert bearer.headers["WWW-Authenticate"] == "Token"
    # Auth comes before parsing: an unauthenticated client learns nothing about the schema.
    assert_error(
        await gw.client.post(
            "/api/dataset_info/", content=b"{", headers={"Content-Type": "application/json"}
        ),
        401,
    )


async def test_404_for_unknown_dataset_tag_and_path(gw: Gateway) -> None:
    token = await gw.token("acme")
    assert_error(await gw.post("/api/dataset_info/", {"dataset": "nowhere"}, token), 404, "dataset 'nowhere'")
    assert_error(await gw.post("/api/delete_tag/", {"tag_id": 999}, token), 404, "tag 999")
    unknown_path = await gw.post("/api/no_such_call/", {}, token)
    assert assert_error(unknown_path, 404)["error"] == "not_found"
    assert assert_error(await gw.client.get("/api/tag_texts/extra"), 404)["error"] == "not_found"


async def test_405_for_wrong_method(gw: Gateway) -> None:
    for path in ("/api/tag_texts/", "/api/tag_texts"):
        response = await gw.client.get(path)
        assert assert_error(response, 405, "GET")["error"] == "method_not_allowed"
        assert response.headers["Allow"] == "POST"
    assert_error(await gw.client.delete("/api/delete_tag/"), 405)


async def test_413_for_body_list_and_text_over_limits(gateway_factory: Callable[..., Any]) -> None:
    async with gateway_factory(max_items=3, max_text_chars=20, max_body_bytes=4000) as gw:
        token = await gw.token("acme")
        await gw.post("/api/create_tag/", {"dataset": "d", "title": "t"}, token)
        too_many = {"dataset": "d", "contents": ["a", "b", "c", "d"]}
        assert_error(await gw.post("/api/tag_texts/", too_many, token), 413, "KASHF_MAX_ITEMS", "4 items")
        too_long = {"dataset": "d", "contents": ["خیلی " * 10]}
        assert_error(
            await gw.post("/api/tag_texts/", too_long, token), 413, "KASHF_MAX_TEXT_CHARS", "contents[0]"
        )
        long_report = [{"content": "x" * 21, "tag_id": 1, "positive": True}]
        assert_error(await gw.post("/api/report_text_tags/", long_report, token), 413, "reports[0].content")
        huge = {"dataset": "d", "contents": ["x" * 5000]}
        assert_error(await gw.post("/api/tag_texts/", huge, token), 413, "KASHF_MAX_BODY_BYTES")

        # A chunked body without Content-Length is cut off while it is read.
        async def chunks() -> Any:
            yield b'{"dataset": "d", "contents": ["'
            for _ in range(100):
                yield b"x" * 100
            yield b'"]}'

        streamed = await gw.client.post(
            "/api/tag_texts/",
            content=chunks(),
            headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        )
        assert_error(streamed, 413, "KASHF_MAX_BODY_BYTES")


async def test_415_for_unsupported_content_type(gw: Gateway) -> None:
    token = await gw.token("acme")
    headers = {"Authorization": f"Token {token}"}
    plain = await gw.client.post(
        "/api/dataset_info/", content=b'{"dataset": "d"}', headers={**headers, "Content-Type": "text/plain"}
    )
    assert_error(plain, 415, "application/json")
    form = await gw.client.post("/api/tag_texts/", data={"dataset": "d"}, headers=headers)
    assert_error(form, 415)
    upload_to_json_only = await gw.client.post(
        "/api/tag_texts/", data={"dataset": "d"}, files={"f": ("a.txt", b"x")}, headers=headers
    )
    assert_error(upload_to_json_only, 415, "application/json")


async def test_422_names_the_field_and_why(gw: Gateway) -> None:
    token = await gw.token("acme")
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    broken = await gw.client.post(
        "/api/tag_texts/", content=b'{"dataset": "d", "contents": [', headers=headers
    )
    assert assert_error(broken, 422, "not valid JSON")["error"] == "invalid_json"
    missing = await gw.post("/api/tag_texts/", {"dataset": "d"}, token)
    assert_error(missing, 422, "contents", "required")
    wrong_type = await gw.post(
        "/api/report_text_tags/", [{"content": "x", "tag_id": "abc", "positive": True}], token
    )
    assert_error(wrong_type, 422, "[0].tag_id", "integer")
    not_a_list = await gw.post("/api/tag_texts/", {"dataset": "d", "contents": "just one"}, token)
    assert_error(not_a_list, 422, "contents", "list")
    empty = await gw.client.post("/api/dataset_info/", content=b"", headers=headers)
    assert_error(empty, 422, "body is required")
    bad_images = await gw.client.post("/api/tag_images/", content=b"[1]", headers=headers)
    assert_error(bad_images, 422)
    missing_dataset = await gw.client.post(
        "/api/tag_images/",
        headers={"Authorization": f"Token {token}"},
        data={"x": "1"},
        files={"image_file": ("a.png", b"\x89PNG")},
    )
    assert_error(missing_dataset, 422, "dataset")


async def test_429_over_the_account_rate(gateway_factory: Callable[..., Any]) -> None:
    async with gateway_factory(rate_per_minute=1, rate_burst=2) as gw:
        acme, other = await gw.token("acme"), await gw.token("other")
        statuses = [(await gw.post("/api/list_datasets/", {}, acme)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        limited = await gw.post("/api/list_datasets/", {}, acme)
        assert_error(limited, 429, "KASHF_RATE_PER_MINUTE")
        assert int(limited.headers["Retry-After"]) >= 1
        assert (await gw.post("/api/list_datasets/", {}, other)).status_code == 200  # per account


async def test_502_when_a_reported_image_cannot_be_fetched(gw: Gateway) -> None:
    """vision_service reports a per-item fetch failure: the whole report fails, nothing is stored."""
    token = await gw.token("acme")
    tag_id = (await gw.post("/api/create_tag/", {"dataset": "iran", "title": "t"}, token)).json()["tag_id"]

    async def embed(data: bytes) -> bytes:
        items = [ImageEmbedding(error="http status 404", error_code="fetch_failed", error_status=502)]
        return EmbedImagesReply(model_id="m", dim=4, items=items).model_dump_json().encode()

    async with responder(gw.settings.nats_url, VISION_EMBED, embed):
        response = await gw.post(
            "/api/report_image_tags/",
            [{"image_url": "https://example.org/gone.jpg", "tag_id": tag_id, "positive": True}],
            token,
        )
    assert assert_error(response, 502, "reports[0].image_url: http status 404")["error"] == "fetch_failed"
    info = (await gw.post("/api/dataset_info/", {"dataset": "iran"}, token)).json()
    assert info["report_count"] == 0 and info["data_count"] == 0  # all or nothing


async def test_503_when_no_text_service_runs(gw: Gateway) -> None:
    token = await gw.token("acme")
    await gw.post("/api/create_tag/", {"dataset": "d", "title": "t"}, token)
    started = time.perf_counter()
    response = await gw.post("/api/tag_texts/", {"dataset": "d", "contents": ["سلام"]}, token)
    assert assert_error(response, 503, "text_service is not running")["error"] == "unavailable"
    # NATS says "no responders" at once; the gateway asks twice more, 0.1 and 0.3 s later (a restart).
    took = time.perf_counter() - started
    print(f"\n503 with no text_service after {took:.2f} s (timeout {TEXT_TAG.timeout_s:g} s)")
    assert took < TEXT_TAG.timeout_s / 3
    images = await gw.post(
        "/api/tag_images/", {"dataset": "i", "image_urls": ["https://example.org/a.jpg"]}, token
    )
    assert_error(images, 404)  # dataset i does not exist yet
    await gw.post("/api/create_dataset/", {"dataset": "i", "kind": "image"}, token)
    images = await gw.post(
        "/api/tag_images/", {"dataset": "i", "image_urls": ["https://example.org/a.jpg"]}, token
    )
    assert_error(images, 503, "vision_service is not running")


async def test_504_when_the_text_service_never_answers(
    gateway_factory: Callable[..., Any], nats_url: str
) -> None:
    async def never(data: bytes) -> None:
        return None

    async with gateway_factory(text_timeout_s=0.3) as gw, responder(nats_url, TEXT_TAG, never):
        token = await gw.token("acme")
        await gw.post("/api/create_tag/", {"dataset": "d", "title": "t"}, token)
        response = await gw.post("/api/tag_texts/", {"dataset": "d", "contents": ["سلام"]}, token)
    assert assert_error(response, 504, "text_service did not answer within 0.3 s")["error"] == "timeout"


async def test_504_for_a_slow_video_tells_the_client_to_go_async(
    gateway_factory: Callable[..., Any], nats_url: str
) -> None:
    async def never(data: bytes) -> None:
        return None

    async with gateway_factory(video_timeout_s=0.3) as gw, responder(nats_url, VIDEO_TAG, never):
        token = await gw.token("acme")
        await gw.post("/api/create_dataset/", {"dataset": "v", "title": "v", "kind": "image"}, token)
        response = await gw.post("/api/tag_video_frames/",
                                 {"dataset": "v", "every_ms": 500, "video_urls": ["https://example.org/a.mp4"]}, token)
    body = assert_error(response, 504, "video_service did not answer within 0.3 s")
    assert '"async": true' in body["detail"] and "/api/video_job/" in body["detail"]


async def test_503_when_the_database_is_unreachable(nats_url: str) -> None:
    from devtools.servers import free_port
    from tests.unit.gateway.harness import make_settings, running

    closed = f"postgresql+asyncpg://kashf@127.0.0.1:{free_port()}/kashf"
    async with running(make_settings(closed, nats_url)) as gw:
        response = await gw.post("/api/list_datasets/", {}, "some-token")
        ready = await gw.client.get("/readyz")
    assert assert_error(response, 503, "database unavailable")["error"] == "unavailable"
    assert assert_error(ready, 503, "database")["error"] == "unavailable"


async def test_hostile_bodies_get_clear_errors_and_change_nothing(gw: Gateway) -> None:
    """Inputs Postgres or the bus would choke on are refused up front (never a 500), naming the field."""
    token = await gw.token("acme")
    tag = (await gw.post("/api/create_tag/", {"dataset": "d", "title": "t"}, token)).json()["tag_id"]
    cases: list[tuple[str, Any, int, str]] = [
        ("/api/report_text_tags/", [{"content": "ab\u0000c", "tag_id": tag, "positive": True}], 422, "NUL"),
        ("/api/create_tag/", {"dataset": "d\u0000x", "title": "t"}, 422, "dataset contains a NUL"),
        ("/api/report_text_tags/", [{"content": "abc", "tag_id": 10**30, "positive": True}], 422, "[0].tag_id"),
        ("/api/update_tag/", {"tag_id": 2**63, "title": "x"}, 422, "tag_id"),
        ("/api/tag_video_frames/", {"dataset": "d", "every_ms": 10**20, "video_urls": ["https://e.org/a.mp4"]},
         422, "every_ms"),
        ("/api/create_dataset/", {"dataset": "k", "kind": "audio"}, 422, "kind"),
    ]
    for path, body, status, detail in cases:
        assert_error(await gw.post(path, body, token), status, detail)
    raw = await gw.client.post("/api/create_tag/", content=b'{"dataset": "d", "title": "\\ud800"}',
                               headers={"Authorization": f"Token {token}", "Content-Type": "application/json"})
    assert_error(raw, 422, "title")
    # A lone surrogate can be written in JSON but not stored or sent on: 422 naming the field, nothing kept.
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    for path, content, field in [
        ("/api/tag_texts/", b'{"dataset": "d", "contents": ["ok", "a\\ud800b"]}', "contents[1] contains a lone"),
        ("/api/report_text_tags/", b'[{"content": "\\udfff", "tag_id": %d, "positive": true}]' % tag,
         "content contains a lone surrogate"),
        ("/api/create_dataset/", b'{"dataset": "x\\udc00", "kind": "text"}', "dataset contains a lone"),
    ]:
        assert_error(await gw.client.post(path, content=content, headers=headers), 422, field)
    info = (await gw.post("/api/dataset_info/", {"dataset": "d", "tags": True}, token)).json()
    assert info["report_count"] == 0 and [t["title"] for t in info["tags"]] == ["t"]
    missing = await gw.post("/api/dataset_info/", {"dataset": "d\u0000x"}, token)
    assert_error(missing, 422, "NUL")
