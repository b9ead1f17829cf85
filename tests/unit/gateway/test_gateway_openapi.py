"""/openapi.json states the rules the server enforces, so that clients generated from it can trust it: every
request id is a non-negative int64, every string refuses NUL, every list refuses to be empty; the server
agrees at each bound (and JSON booleans are booleans, durations finite and bounded)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gateway.schemas import NO_NUL
from tests.unit.gateway.harness import Gateway
from tests.unit.gateway.test_gateway_errors import assert_error

INT64_MAX = 2**63 - 1


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _fields(schema: dict[str, Any], spec: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (path, schema) in a request body, objects entered, ``anyOf`` branches each."""
    schema = _resolve(schema, spec)
    for branch in schema.get("anyOf", []):
        yield from _fields(branch, spec, path)
    if "anyOf" in schema:
        return
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from _fields(prop, spec, f"{path}.{name}")
    if "items" in schema:
        yield from _fields(schema["items"], spec, f"{path}[]")


def _request_fields(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for route, methods in spec["paths"].items():
        body = methods.get("post", {}).get("requestBody")
        if route.startswith("/api/") and body:
            for media, content in body["content"].items():
                found += list(_fields(content["schema"], spec, f"{route} {media} "))
    return found


async def test_every_request_field_states_its_bounds(gw: Gateway) -> None:
    spec = (await gw.client.get("/openapi.json")).json()
    fields = _request_fields(spec)
    assert len({path.split()[0] for path, _ in fields}) >= 12  # every /api route with a body was walked
    ids = [(p, s) for p, s in fields if s.get("type") == "integer" and p.endswith("_id")]
    assert ids and all(s["format"] == "int64" and s["minimum"] == 0 and "maximum" not in s for _, s in ids)
    texts = [(p, s) for p, s in fields if s.get("type") == "string" and s.get("format") != "binary" and "enum" not in s]
    assert texts and [p for p, s in texts if s.get("pattern") != NO_NUL["pattern"]] == []
    lists = [(p, s) for p, s in fields if s.get("type") == "array"]
    assert lists and [p for p, s in lists if s.get("minItems") != 1] == []
    video = [
        s for p, s in fields
        if p.startswith("/api/tag_video_frames/") and p.endswith(".duration") and s.get("type") == "number"
    ]
    assert video and all(s["maximum"] == 86_400 and s["minimum"] == 0 for s in video)


async def test_the_server_agrees_at_each_bound(gw: Gateway) -> None:
    token = await gw.token("acme")
    tag = (await gw.post("/api/create_tag/", {"dataset": "d", "title": "t"}, token)).json()["tag_id"]
    edge = await gw.post("/api/delete_tag/", {"tag_id": INT64_MAX}, token)
    assert assert_error(edge, 404)["error"] == "tag_not_found"
    for outside in (INT64_MAX + 1, -1):
        assert_error(await gw.post("/api/delete_tag/", {"tag_id": outside}, token), 422, "tag_id")
    assert_error(await gw.post("/api/create_tag/", {"dataset": "d\u0000", "title": "t"}, token), 422, "NUL")
    assert_error(await gw.post("/api/tag_texts/", {"dataset": "d", "contents": []}, token), 400, "empty")
    assert_error(await gw.post("/api/dataset_info/", {"dataset": "d", "tags": 0}, token), 422, "tags")
    assert_error(await gw.post("/api/update_tag/", {"tag_id": tag, "active": 1}, token), 422, "active")
    report = [{"content": "x", "tag_id": tag, "positive": "true"}]
    assert_error(await gw.post("/api/report_text_tags/", report, token), 422, "[0].positive")
    without = await gw.post("/api/dataset_info/", {"dataset": "d", "tags": False}, token)
    assert without.status_code == 200 and "tags" not in without.json()


async def test_durations_are_finite_seconds_up_to_a_day(gw: Gateway) -> None:
    token = await gw.token("acme")
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    base = '{"dataset": "none", "video_urls": ["https://example.org/v.mp4"], "duration": %s}'
    for bad in ("1e308", "Infinity", "-Infinity", "NaN", "86401"):
        response = await gw.client.post("/api/tag_video_frames/", content=base % bad, headers=headers)
        assert_error(response, 422, "duration")
    for fine in ("25", "0", "86400", "null"):  # valid: the request goes on, to the dataset it names
        response = await gw.client.post("/api/tag_video_frames/", content=base % fine, headers=headers)
        assert assert_error(response, 404)["error"] == "dataset_not_found"
    assert_error(await gw.post("/api/tag_video_frames/", {**_spec_video(), "async": 1}, token), 422, "async")
    assert_error(await gw.post("/api/tag_video_frames/", {**_spec_video(), "duration": -1}, token), 400, "duration")
    spec_example = await gw.post("/api/tag_video_frames/", _spec_video(), token)
    assert assert_error(spec_example, 404)["error"] == "dataset_not_found"  # valid as the SPEC writes it


async def test_form_fields_stay_strings_parsed_leniently(gw: Gateway) -> None:
    token = await gw.token("acme")
    upload = [("video_file", ("clip.mp4", b"\x00" * 64, "video/mp4"))]
    form = {"dataset": "none", "every_ms": "100", "duration": "25", "async": "true"}
    response = await gw.client.post(
        "/api/tag_video_frames/", data=form, files=upload, headers={"Authorization": f"Token {token}"}
    )
    assert assert_error(response, 404)["error"] == "dataset_not_found"
    infinite = await gw.client.post(
        "/api/tag_video_frames/", data={**form, "duration": "Infinity"}, files=upload,
        headers={"Authorization": f"Token {token}"},
    )
    assert_error(infinite, 422, "duration")


def _spec_video() -> dict[str, Any]:
    return {
        "dataset": "iran", "every_ms": 100, "duration": 25, "min_frame_diff": 50,
        "video_urls": ["https://hw15.cdn.asset.aparat.com/aparat-video/98b7e4cc-480p__79959.mp4"],
    }
