"""Reports from files, browsing and undo: report_image_tags by upload, list_items, an item's kept image and
delete_report, on the real app, Postgres and NATS; vision_service is a test peer on the real bus that decodes
what it is sent with Pillow (so "not an image" is a real decoding failure)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import nats
import numpy as np
import pytest
from PIL import Image

from shared.schemas.inference import pack_vectors
from shared.schemas.media import EmbedImagesReply, EmbedImagesRequest, ImageEmbedding
from shared.subjects import BLOBS_BUCKET, VISION_EMBED, report_subject
from tests.unit.gateway.harness import Gateway, png_bytes, responder, sql
from tests.unit.gateway.test_gateway_errors import assert_error
from tests.unit.gateway.test_query_plans import GROWING, _full_scans, captured


class Vision:
    """Embeds like vision_service: reads inline bytes or the blob, decodes them, keeps a JPEG copy."""

    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.seen: list[str] = []  # the file names that reached it
        self.blob_keys: list[str] = []  # uploads that came by the object store

    async def embed(self, data: bytes) -> bytes:
        request = EmbedImagesRequest.model_validate_json(data)
        nc = await nats.connect(self.nats_url)
        try:
            store = await nc.jetstream().object_store(BLOBS_BUCKET)
            items = []
            for image in request.images:
                self.seen.append(image.name or image.url or "")
                if image.url is not None:
                    items.append(ImageEmbedding(error="HTTP 404", error_code="fetch_failed", error_status=502))
                    continue
                if image.blob_key is not None:
                    self.blob_keys.append(image.blob_key)
                raw = image.data if image.data is not None else (await store.get(image.blob_key or "")).data or b""
                items.append(self._one(raw))
        finally:
            await nc.close()
        return EmbedImagesReply(model_id="img-test", dim=4, items=items).model_dump_json().encode()

    @staticmethod
    def _one(raw: bytes) -> ImageEmbedding:
        try:
            picture = Image.open(io.BytesIO(raw)).convert("RGB")
        except Exception:
            return ImageEmbedding(error="not a decodable image", error_code="unsupported_media", error_status=415)
        copy = io.BytesIO()
        picture.save(copy, "JPEG", quality=95)
        digest = hashlib.sha256(raw).digest()
        vector = np.frombuffer(digest[:16], dtype=np.uint8).astype(np.float32)[:4] / 255
        return ImageEmbedding(
            vector=base64.b64encode(pack_vectors(vector[None])), sha256=digest.hex(),
            copy_bytes=base64.b64encode(copy.getvalue()), copy_media_type="image/jpeg",
        )


@pytest.fixture
async def vision(gw: Gateway) -> AsyncIterator[Vision]:
    peer = Vision(gw.settings.nats_url)
    async with responder(gw.settings.nats_url, VISION_EMBED, peer.embed):
        yield peer


async def _upload(
    gw: Gateway, token: str, files: list[tuple[str, bytes]], **fields: str
) -> httpx.Response:
    return await gw.client.post(
        "/api/report_image_tags/",
        headers={"Authorization": f"Token {token}"},
        data=fields,
        files=[("image_file", (name, content, "application/octet-stream")) for name, content in files],
    )


async def _tag(gw: Gateway, token: str, dataset: str, title: str) -> int:
    response = await gw.post("/api/create_tag/", {"dataset": dataset, "title": title}, token)
    return int(response.json()["tag_id"])


async def _texts(gw: Gateway, token: str, tag_id: int, texts: list[str], positive: bool = True) -> list[int]:
    body = [{"content": text, "tag_id": tag_id, "positive": positive} for text in texts]
    response = await gw.post("/api/report_text_tags/", body, token)
    assert response.status_code == 200, response.text
    return [element["id"] for element in response.json()]


async def _list(gw: Gateway, token: str, **body: Any) -> dict[str, Any]:
    response = await gw.post("/api/list_items/", body, token)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_report_image_files_answers_per_file_and_stores_the_good_ones(
    gw: Gateway, vision: Vision
) -> None:
    token = await gw.token("acme")
    await gw.post("/api/create_dataset/", {"dataset": "iran", "kind": "image"}, token)
    milad = await _tag(gw, token, "iran", "برج میلاد")
    photo, other = png_bytes(0), png_bytes(3)
    files = [("milad.png", photo), ("notes.txt", b"not an image at all"), ("other.png", other)]
    response = await _upload(gw, token, files, tag_id=str(milad), positive="0", dataset="iran")
    assert response.status_code == 200, response.text
    first, failed, second = response.json()
    assert failed == {"image_file": "notes.txt", "error": "not a decodable image"}
    assert first == {"report": f"[[{milad},false]]", "id": first["id"], "image_file": "milad.png"}
    assert second == {"report": f"[[{milad},false]]", "id": second["id"], "image_file": "other.png"}
    assert vision.seen == ["milad.png", "notes.txt", "other.png"]
    rows = await sql(gw.settings.database_url,
                     "SELECT i.id, i.media_type, i.content_hash, r.positive, e.model_id FROM data_item i "
                     "JOIN report r ON r.item_id = i.id JOIN embedding e ON e.item_id = i.id ORDER BY i.id")
    assert [(r["id"], r["media_type"], r["content_hash"], r["positive"], r["model_id"]) for r in rows] == sorted([
        (first["id"], "image/jpeg", hashlib.sha256(photo).hexdigest(), False, "img-test"),
        (second["id"], "image/jpeg", hashlib.sha256(other).hexdigest(), False, "img-test"),
    ])
    # positive defaults to true, and a later label of the same image and tag replaces the earlier one.
    again = await _upload(gw, token, [("milad-again.png", photo)], tag_id=str(milad))
    assert again.json() == [{"report": f"[[{milad},true]]", "id": first["id"], "image_file": "milad-again.png"}]
    # A JSON body is still a list of URL reports (vision fetches the URL: here it fails, all or nothing).
    by_url = await gw.post("/api/report_image_tags/", [{"image_url": "https://example.org/a.jpg",
                                                        "tag_id": milad, "positive": True}], token)
    assert assert_error(by_url, 502, "reports[0].image_url: HTTP 404")["error"] == "fetch_failed"


async def test_report_image_files_refuses_oversized_files_one_by_one(
    gateway_factory: Callable[..., Any], nats_url: str
) -> None:
    photo = png_bytes(1)
    async with gateway_factory(max_image_bytes=len(photo) + 10) as gw:
        peer = Vision(nats_url)
        token = await gw.token("acme")
        tag_id = await _tag(gw, token, "iran", "t")
        noise = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(noise, "PNG")
        async with responder(nats_url, VISION_EMBED, peer.embed):
            response = await _upload(gw, token, [("big.png", noise.getvalue()), ("ok.png", photo)],
                                     tag_id=str(tag_id))
    assert response.status_code == 200, response.text
    big, ok = response.json()
    assert big == {"image_file": "big.png", "error": f"over the limit of {len(photo) + 10} bytes "
                                                     "(KASHF_MAX_IMAGE_BYTES)"}
    assert ok["report"] == f"[[{tag_id},true]]" and ok["image_file"] == "ok.png"
    assert peer.seen == ["ok.png"]  # the oversized file never left the gateway


async def test_a_large_upload_goes_through_the_blob_store_and_is_deleted_after(
    gw: Gateway, vision: Vision, nats_url: str
) -> None:
    token = await gw.token("acme")
    tag_id = await _tag(gw, token, "iran", "t")
    noise = io.BytesIO()  # incompressible: over the 256 KiB that travel inline
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (400, 400, 3), dtype=np.uint8)).save(noise, "PNG")
    big = noise.getvalue()
    assert len(big) > 256 * 1024
    response = await _upload(gw, token, [("small.png", png_bytes(0)), ("big.png", big)], tag_id=str(tag_id))
    assert response.status_code == 200, response.text
    assert [a["report"] for a in response.json()] == [f"[[{tag_id},true]]"] * 2
    stored = await sql(gw.settings.database_url, "SELECT content_hash FROM data_item WHERE id = $1",
                       response.json()[1]["id"])
    assert stored[0]["content_hash"] == hashlib.sha256(big).hexdigest()
    assert len(vision.blob_keys) == 1  # the small one travelled inline
    nc = await nats.connect(nats_url)
    try:
        store = await nc.jetstream().object_store(BLOBS_BUCKET)
        with pytest.raises(nats.js.errors.NotFoundError):  # deleted once the report was answered
            await store.get(vision.blob_keys[0])
    finally:
        await nc.close()


async def test_report_image_files_bad_forms(gw: Gateway, vision: Vision) -> None:
    alice, bob = await gw.token("alice"), await gw.token("bob")
    tag_id = await _tag(gw, alice, "iran", "t")
    other_dataset_tag = await _tag(gw, alice, "tehran", "t")
    photo = [("a.png", png_bytes(0))]
    assert_error(await _upload(gw, alice, photo, tag_id=str(tag_id), positive="maybe"), 422, "positive")
    assert_error(await _upload(gw, alice, photo, positive="true"), 422, "tag_id")
    no_files = await gw.client.post("/api/report_image_tags/", headers={"Authorization": f"Token {alice}"},
                                    data={"tag_id": str(tag_id)}, files=[("photo", ("a.png", b"x", "image/png"))])
    assert_error(no_files, 400, "image_file is empty")
    assert_error(await _upload(gw, alice, photo, tag_id=str(other_dataset_tag), dataset="iran"), 404, "iran")
    assert_error(await _upload(gw, bob, photo, tag_id=str(tag_id)), 404, f"tag {tag_id} not found")
    await gw.post("/api/create_dataset/", {"dataset": "texts", "kind": "text"}, alice)
    text_tag = await _tag(gw, alice, "texts", "t")
    assert_error(await _upload(gw, alice, photo, tag_id=str(text_tag)), 400, "holds texts")
    assert vision.seen == []  # refused before any image was sent
    assert await sql(gw.settings.database_url, "SELECT id FROM report") == []


async def test_json_image_reports_fail_as_before(gw: Gateway) -> None:
    """The route now reads its body itself (JSON or a form): JSON errors are still FastAPI's own."""
    token = await gw.token("acme")
    tag_id = await _tag(gw, token, "iran", "t")
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    broken = await gw.client.post("/api/report_image_tags/", content=b'[{"image_url": ', headers=headers)
    assert assert_error(broken, 422, "not valid JSON", "at position 15")["error"] == "invalid_json"
    # Answered word for word like report_text_tags, whose list body FastAPI still parses.
    for raw in (b'[{"image_url": ', b"", b'{"image_url": "x"}', b"[1]", b"NaN"):
        image = await gw.client.post("/api/report_image_tags/", content=raw, headers=headers)
        texts = await gw.client.post("/api/report_text_tags/", content=raw, headers=headers)
        assert (image.status_code, image.json()) == (texts.status_code, texts.json()), raw
        assert image.status_code == 422
    assert_error(await gw.post("/api/report_image_tags/", [], token), 400, "reports is empty")
    loose = [{"image_url": "https://example.org/a.jpg", "tag_id": tag_id, "positive": "true"}]
    assert_error(await gw.post("/api/report_image_tags/", loose, token), 422, "[0].positive")
    text = await gw.client.post("/api/report_image_tags/", content=b"x",
                                headers={**headers, "Content-Type": "text/plain"})
    assert_error(text, 415, "multipart/form-data")


async def test_list_items_newest_first_in_stable_pages(gw: Gateway) -> None:
    token = await gw.token("acme")
    good, bad = await _tag(gw, token, "reviews", "good"), await _tag(gw, token, "reviews", "bad")
    texts = {item_id: text for text in (f"review {i}" for i in range(5))
             for item_id in await _texts(gw, token, good, [text])}
    ids = sorted(texts, reverse=True)  # newest first
    await _texts(gw, token, bad, [texts[ids[3]]], positive=False)
    page = await _list(gw, token, dataset="reviews", limit=2)
    assert [item["id"] for item in page["items"]] == ids[:2]
    newest = page["items"][0]
    assert set(newest) == {"id", "content", "reports", "report_ids", "created"}
    assert newest["content"] == "review 4" and newest["reports"] == [[good, True]]
    assert datetime.fromisoformat(newest["created"]).tzinfo is not None
    # Items reported meanwhile do not shift the next page.
    later = await _texts(gw, token, good, ["review 5", "review 6"])
    second = await _list(gw, token, dataset="reviews", limit=2, cursor=page["next_cursor"])
    assert [item["id"] for item in second["items"]] == ids[2:4]
    assert second["items"][1]["reports"] == [[good, True], [bad, False]]
    labels = await sql(gw.settings.database_url, "SELECT id, tag_id FROM report WHERE item_id = $1 ORDER BY tag_id",
                       ids[3])
    assert second["items"][1]["report_ids"] == [r["id"] for r in labels]
    last = await _list(gw, token, dataset="reviews", limit=2, cursor=second["next_cursor"])
    assert [item["id"] for item in last["items"]] == ids[4:] and last["next_cursor"] is None
    everything = await _list(gw, token, dataset="reviews")  # limit 50 by default
    assert [item["id"] for item in everything["items"]] == sorted(later, reverse=True) + ids
    assert everything["next_cursor"] is None
    only_bad = await _list(gw, token, dataset="reviews", tag_id=bad)
    assert [item["id"] for item in only_bad["items"]] == [ids[3]]
    # A kept tag-call input is no item of the dataset until someone reports it.
    await sql(gw.settings.database_url,
              "INSERT INTO data_item (dataset_id, kind, content_hash, content, origin) "
              "SELECT dataset_id, 'text', 'input-hash', 'an input', 'input' FROM data_item WHERE id = $1", ids[0])
    assert len((await _list(gw, token, dataset="reviews"))["items"]) == 7


async def test_list_items_refuses_bad_cursors_limits_and_tags(gw: Gateway) -> None:
    token = await gw.token("acme")
    tag_id = await _tag(gw, token, "reviews", "good")
    elsewhere = await _tag(gw, token, "other", "good")
    await _texts(gw, token, tag_id, ["a", "b"])
    cursor = (await _list(gw, token, dataset="reviews", limit=1))["next_cursor"]
    for forged in ("not-a-cursor", cursor[:-2], base64.urlsafe_b64encode(b"k1:-5").decode(), "!!", "azE6"):
        response = await gw.post("/api/list_items/", {"dataset": "reviews", "cursor": forged}, token)
        assert assert_error(response, 400, "cursor")["error"] == "bad_cursor", forged
    for limit in (0, 501, "10"):
        assert_error(await gw.post("/api/list_items/", {"dataset": "reviews", "limit": limit}, token), 422, "limit")
    assert len((await _list(gw, token, dataset="reviews", limit=500))["items"]) == 2
    response = await gw.post("/api/list_items/", {"dataset": "reviews", "tag_id": elsewhere}, token)
    assert assert_error(response, 404, f"tag {elsewhere}")["error"] == "tag_not_found"
    assert_error(await gw.post("/api/list_items/", {"dataset": "nope"}, token), 404, "nope")


async def test_the_kept_image_is_served_with_caching_headers(gw: Gateway, vision: Vision) -> None:
    token = await gw.token("acme")
    tag_id = await _tag(gw, token, "iran", "t")
    photo = png_bytes(2, size=96)
    item_id = (await _upload(gw, token, [("a.png", photo)], tag_id=str(tag_id))).json()[0]["id"]
    listed = (await _list(gw, token, dataset="iran"))["items"]
    assert listed == [{"id": item_id, "image": f"/api/items/{item_id}/image", "reports": [[tag_id, True]],
                       "report_ids": listed[0]["report_ids"], "created": listed[0]["created"]}]
    auth = {"Authorization": f"Token {token}"}
    for path in (listed[0]["image"], listed[0]["image"] + "/"):
        image = await gw.client.get(path, headers=auth)
        assert image.status_code == 200, image.text
        assert image.headers["content-type"] == "image/jpeg"
        kept = Image.open(io.BytesIO(image.content))
        assert kept.format == "JPEG" and kept.size == (96, 96)
        assert image.headers["etag"] == f'"{hashlib.sha256(photo).hexdigest()}"'
        assert image.headers["cache-control"].startswith("private")
    revalidated = await gw.client.get(listed[0]["image"], headers={**auth, "If-None-Match": image.headers["etag"]})
    assert revalidated.status_code == 304 and revalidated.content == b""
    assert_error(await gw.client.get(listed[0]["image"]), 401, "Authorization")
    assert_error(await gw.client.get(f"/api/items/{item_id + 1000}/image", headers=auth), 404, "item")
    assert_error(await gw.client.get("/api/items/-1/image", headers=auth), 422, "item_id")
    assert_error(await gw.client.get(f"/api/items/{2**63}/image", headers=auth), 422, "item_id")
    assert_error(await gw.client.post(listed[0]["image"], headers=auth), 405, "GET")
    text_tag = await _tag(gw, token, "texts", "t")
    (text_item,) = await _texts(gw, token, text_tag, ["متن"])
    assert_error(await gw.client.get(f"/api/items/{text_item}/image", headers=auth), 404, "no image")


async def test_delete_report_by_id_or_item_and_tag(gw: Gateway) -> None:
    token = await gw.token("acme")
    good, bad = await _tag(gw, token, "reviews", "good"), await _tag(gw, token, "reviews", "bad")
    first, second = await _texts(gw, token, good, ["خوب بود", "بد بود"])
    await _texts(gw, token, bad, ["بد بود"])
    listed = {item["id"]: item for item in (await _list(gw, token, dataset="reviews"))["items"]}
    wrong = listed[second]["report_ids"][0]  # "بد بود" reported as good by mistake
    outbox_before = len(await sql(gw.settings.database_url, "SELECT id FROM outbox"))

    deleted = await gw.post("/api/delete_report/", {"id": wrong}, token)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"id": wrong, "deleted": True}
    assert (await _list(gw, token, dataset="reviews", tag_id=good))["items"][0]["id"] == first
    after = {item["id"]: item for item in (await _list(gw, token, dataset="reviews"))["items"]}
    assert after[second]["reports"] == [[bad, True]]
    info = (await gw.post("/api/dataset_info/", {"dataset": "reviews"}, token)).json()
    assert info["report_count"] == 2
    assert {t["id"]: t["reports"] for t in info["tags"]} == {good: 1, bad: 1}
    # The trainer hears of it as of a report (a debounced refit) on the dataset's report subject.
    events = await sql(gw.settings.database_url, "SELECT subject, msg_id, payload FROM outbox ORDER BY id")
    assert len(events) == outbox_before + 1
    assert events[-1]["msg_id"].startswith(f"report-{wrong}-deleted-")
    (dataset,) = await sql(gw.settings.database_url, "SELECT id FROM dataset WHERE name = 'reviews'")
    assert events[-1]["subject"] == report_subject(dataset["id"])
    assert json.loads(events[-1]["payload"]) == {"dataset_id": dataset["id"], "item_id": second, "tag_id": good,
                                                 "positive": True, "report_id": wrong}
    assert_error(await gw.post("/api/delete_report/", {"id": wrong}, token), 404, f"report {wrong}")

    by_pair = await gw.post("/api/delete_report/", {"item_id": first, "tag_id": good}, token)
    assert by_pair.json() == {"id": listed[first]["report_ids"][0], "deleted": True}
    assert (await _list(gw, token, dataset="reviews"))["items"][-1] == {**listed[first], "reports": [],
                                                                         "report_ids": []}
    again = await gw.post("/api/delete_report/", {"item_id": first, "tag_id": good}, token)
    assert assert_error(again, 404, f"item {first} has no report of tag {good}")["error"] == "report_not_found"
    for body in ({}, {"id": 1, "tag_id": good}, {"item_id": first}, {"id": -1}, {"id": 2**63}):
        assert_error(await gw.post("/api/delete_report/", body, token), 422)


async def test_another_accounts_items_and_reports_are_404(gw: Gateway, vision: Vision) -> None:
    alice, bob = await gw.token("alice"), await gw.token("bob")
    text_tag = await _tag(gw, alice, "reviews", "good")
    (item,) = await _texts(gw, alice, text_tag, ["عالی بود"])
    photo_tag = await _tag(gw, alice, "photos", "برج")
    photo = (await _upload(gw, alice, [("a.png", png_bytes(0))], tag_id=str(photo_tag))).json()[0]["id"]
    report_id = (await _list(gw, alice, dataset="reviews"))["items"][0]["report_ids"][0]
    await _tag(gw, bob, "reviews", "mine")  # bob's own dataset of the same name
    bob_auth = {"Authorization": f"Token {bob}"}
    refused = [
        await gw.post("/api/list_items/", {"dataset": "photos"}, bob),
        await gw.post("/api/list_items/", {"dataset": "reviews", "tag_id": text_tag}, bob),
        await gw.client.get(f"/api/items/{photo}/image", headers=bob_auth),
        await gw.post("/api/delete_report/", {"id": report_id}, bob),
        await gw.post("/api/delete_report/", {"item_id": item, "tag_id": text_tag}, bob),
        await _upload(gw, bob, [("b.png", png_bytes(1))], tag_id=str(photo_tag)),
    ]
    for response in refused:
        assert response.status_code == 404, response.text
        assert "alice" not in response.text
    assert (await _list(gw, bob, dataset="reviews"))["items"] == []
    assert len((await _list(gw, alice, dataset="reviews"))["items"]) == 1  # nothing of alice's was deleted
    assert len(await sql(gw.settings.database_url, "SELECT id FROM report")) == 2


async def test_openapi_documents_the_new_bodies_and_answers(gw: Gateway) -> None:
    spec = (await gw.client.get("/openapi.json")).json()
    paths = spec["paths"]
    report = paths["/api/report_image_tags/"]["post"]["requestBody"]["content"]
    assert report["application/json"]["schema"]["type"] == "array" and report["application/json"]["example"]
    form = report["multipart/form-data"]
    assert {"tag_id", "positive", "dataset", "image_file"} <= set(form["schema"]["properties"]) and form["example"]
    for path in ("/api/list_items/", "/api/delete_report/"):
        post = paths[path]["post"]
        schema = post["requestBody"]["content"]["application/json"]["schema"]
        name = schema["$ref"].rsplit("/", 1)[-1]
        assert spec["components"]["schemas"][name]["examples"], path
        assert {"200", "404", "422"} <= set(post["responses"]), path
    image = paths["/api/items/{item_id}/image"]["get"]
    assert "image/jpeg" in image["responses"]["200"]["content"] and "404" in image["responses"]
    assert "/api/items/{item_id}/image/" not in paths


async def test_the_new_queries_use_indexes(gw: Gateway, vision: Vision) -> None:
    """list_items walks ix_data_item_dataset_newest; no query of these endpoints reads a growing table whole
    (sequential scans priced out, as in test_query_plans)."""
    token = await gw.token("plans")
    tag_id = await _tag(gw, token, "reviews", "good")
    photo_tag = await _tag(gw, token, "photos", "t")
    await _texts(gw, token, tag_id, [f"review {i}" for i in range(4)])
    (photo,) = [a["id"] for a in (await _upload(gw, token, [("a.png", png_bytes(0))], tag_id=str(photo_tag))).json()]
    with captured() as statements:
        page = await _list(gw, token, dataset="reviews", limit=2)
        await _list(gw, token, dataset="reviews", limit=2, cursor=page["next_cursor"], tag_id=tag_id)
        auth = {"Authorization": f"Token {token}"}
        assert (await gw.client.get(f"/api/items/{photo}/image", headers=auth)).is_success
        report_id = page["items"][0]["report_ids"][0]
        assert (await gw.post("/api/delete_report/", {"id": report_id}, token)).is_success
        other = page["items"][1]["id"]
        assert (await gw.post("/api/delete_report/", {"item_id": other, "tag_id": tag_id}, token)).is_success
    conn = await asyncpg.connect(gw.settings.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    offenders, indexes = [], set()
    try:
        await conn.execute("SET enable_seqscan = off")
        for statement, parameters in dict.fromkeys(statements):
            async with conn.transaction():  # EXPLAIN of a DELETE plans it without running it
                plan = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {statement}", *parameters))[0]["Plan"]
            indexes |= set(_index_names(plan))
            if scanned := {table for table in _full_scans(plan, set()) if table in GROWING}:
                offenders.append(f"{sorted(scanned)}: {' '.join(statement.split())[:300]}")
    finally:
        await conn.close()
    assert not offenders, "\n".join(offenders)
    assert "ix_data_item_dataset_newest" in indexes


def _index_names(plan: dict[str, Any]) -> Iterator[str]:
    if "Index Name" in plan:
        yield plan["Index Name"]
    for child in plan.get("Plans", []):
        yield from _index_names(child)
