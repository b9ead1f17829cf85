"""export_dataset through the real app, with fake model services on the real NATS: the request the service gets,
the zip streamed from the blobs bucket and deleted after, the file name, 400 before training, 404 across accounts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote

import nats.js.errors
import pytest
from nats.js.api import ObjectInfo
from nats.js.object_store import ObjectStore

from shared.bus.blobs import BlobStore
from shared.errors import NotFound
from shared.schemas.export import ExportReply, ExportRequest
from shared.subjects import TEXT_EXPORT, VISION_EXPORT, Subject
from tests.unit.gateway.harness import Gateway, responder, sql

NAME = "نظرات دیجی"  # Persian, with a space: the file name needs RFC 5987 encoding


@asynccontextmanager
async def exporter(nats_url: str, subject: Subject, payload: bytes) -> AsyncIterator[list[ExportRequest]]:
    """A fake model service: records each request, puts ``payload`` in the blobs bucket, answers its key."""
    seen: list[ExportRequest] = []

    async def handle(data: bytes) -> bytes:
        request = ExportRequest.model_validate_json(data)
        seen.append(request)
        key = await BlobStore(nc.jetstream()).put(payload, prefix="export")
        version = request.head.version or 0
        return ExportReply(key=key, size=len(payload), version=version,
                           filename=f"{request.dataset}-v{version}.zip").model_dump_json().encode()

    async with responder(nats_url, subject, handle) as nc:
        yield seen


async def _trained(gw: Gateway, token: str, name: str, kind: str) -> dict[str, int]:
    await gw.post("/api/create_dataset/", {"dataset": name, "kind": kind}, token)
    tags = {t: (await gw.post("/api/create_tag/", {"dataset": name, "title": t}, token)).json()["tag_id"]
            for t in ("a", "b")}
    await sql(gw.settings.database_url, "UPDATE dataset SET head_version = 2, state = 'trained' WHERE name = $1", name)
    return tags


async def test_the_zip_is_streamed_from_the_blobs_bucket_then_deleted(gw: Gateway) -> None:
    token = await gw.token("acme")
    tags = await _trained(gw, token, NAME, "text")
    await gw.post("/api/update_tag/", {"tag_id": tags["b"], "threshold": 0.8, "active": False}, token)
    payload = os.urandom(1_500_000)  # a dozen object-store chunks
    async with exporter(gw.settings.nats_url, TEXT_EXPORT, payload) as seen:
        r = await gw.post("/api/export_dataset/", {"dataset": NAME}, token)
    assert r.status_code == 200, r.text
    assert r.content == payload
    assert r.headers["content-type"] == "application/zip"
    assert r.headers["content-length"] == str(len(payload))
    assert r.headers["content-disposition"] == (
        f"attachment; filename=\"{'_' * 5}_{'_' * 4}-v2.zip\"; filename*=UTF-8''{quote(f'{NAME}-v2.zip', safe='')}")
    [request] = seen
    assert request.kind == "text" and request.dataset == NAME and request.head.version == 2
    assert [(t.id, t.title, t.active, t.threshold_override) for t in request.tags] == [
        (tags["a"], "a", True, None), (tags["b"], "b", False, 0.8)]
    # The blob went once streamed: nothing with the export prefix is left.
    store = await gw.state.bus.js.object_store("kashf-blobs")
    left = [o.name for o in await _objects(store) if o.name.startswith("export-")]
    assert left == []


async def _objects(store: ObjectStore) -> list[ObjectInfo]:
    try:
        return await store.list(ignore_deletes=True)
    except nats.js.errors.NotFoundError:  # an empty bucket
        return []


@pytest.mark.parametrize("gone_after", [1, "all"])
async def test_the_zip_is_deleted_when_the_client_goes_away_mid_way_or_at_the_last_byte(
        gw: Gateway, gone_after: int | str) -> None:
    """Starlette cancels a streaming response's scope when the client disconnects (an anyio cancel scope: every
    later await in it is cancelled too); the deletion still happens. With an awaited delete it never did."""
    import anyio

    from gateway.service.export import ExportedZip
    from shared.bus.blobstream import blob_info

    payload = os.urandom(1_000_000)
    key = await BlobStore(gw.state.bus.js).put(payload, prefix="export")
    package = ExportedZip(state=gw.state, info=await blob_info(gw.state.bus.js, key), filename="x.zip")
    received = 0

    async with anyio.create_task_group() as tg:
        async def stream() -> None:
            nonlocal received
            async for chunk in package.chunks():
                received += len(chunk)
                if gone_after == 1 or received == len(payload):
                    tg.cancel_scope.cancel()  # the client went away

        tg.start_soon(stream)
    assert 0 < received <= len(payload) and (gone_after == 1 or received == len(payload))
    store = await gw.state.bus.js.object_store("kashf-blobs")
    for _ in range(50):
        left = [o.name for o in await _objects(store) if o.name == key]
        if not left:
            break
        await asyncio.sleep(0.1)
    assert left == []


async def test_an_image_dataset_goes_to_the_vision_service(gw: Gateway) -> None:
    token = await gw.token("acme")
    await _trained(gw, token, "photos", "image")
    async with exporter(gw.settings.nats_url, VISION_EXPORT, b"PK-image") as seen:
        r = await gw.post("/api/export_dataset", {"dataset": "photos"}, token)  # both spellings
    assert r.status_code == 200 and r.content == b"PK-image"
    assert seen[0].kind == "image"
    assert 'filename="photos-v2.zip"' in r.headers["content-disposition"]


async def test_untrained_unknown_and_other_accounts_datasets_never_reach_a_service(gw: Gateway) -> None:
    token, other = await gw.token("acme"), await gw.token("other")
    await gw.post("/api/create_dataset/", {"dataset": "fresh", "kind": "text"}, token)
    await gw.post("/api/create_dataset/", {"dataset": "unused"}, token)  # no kind yet
    await _trained(gw, token, "mine", "text")
    async with exporter(gw.settings.nats_url, TEXT_EXPORT, b"zip") as seen:
        for name in ("fresh", "unused"):
            r = await gw.post("/api/export_dataset/", {"dataset": name}, token)
            assert r.status_code == 400 and r.json()["error"] == "not_trained", r.text
            assert "train" in r.json()["detail"]
        r = await gw.post("/api/export_dataset/", {"dataset": "mine"}, other)
        assert r.status_code == 404 and r.json()["error"] == "dataset_not_found"
        r = await gw.post("/api/export_dataset/", {"dataset": "nope"}, token)
        assert r.status_code == 404
        r = await gw.post("/api/export_dataset/", {"dataset": "mine"}, None)
        assert r.status_code == 401
        r = await gw.post("/api/export_dataset/", {"dataset": ""}, token)
        assert r.status_code == 422
    assert seen == []


async def test_a_reply_naming_a_missing_blob_is_unavailable_not_an_empty_zip(gw: Gateway) -> None:
    token = await gw.token("acme")
    await _trained(gw, token, "gone", "text")

    async def handle(data: bytes) -> bytes:
        reply = ExportReply(key="export-never-put", size=10, version=2, filename="gone-v2.zip")
        return reply.model_dump_json().encode()

    async with responder(gw.settings.nats_url, TEXT_EXPORT, handle):
        r = await gw.post("/api/export_dataset/", {"dataset": "gone"}, token)
    assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
    with pytest.raises(NotFound):
        await BlobStore(gw.state.bus.js).get("export-never-put", 10)
