"""keep_inputs, update_dataset, suggest_labels and search through the real app (fake model services on NATS)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gateway.service.tagging import kept_inputs_settled
from shared.schemas.inference import EmbedReply, EmbedTextsRequest, ItemResult, ScoredTag, TagReply, TagTextsRequest
from shared.schemas.media import EmbedImagesReply, EmbedImagesRequest, ImageEmbedding, TagImagesRequest
from shared.subjects import TEXT_EMBED, TEXT_TAG, VISION_EMBED, VISION_TAG
from tests.unit.gateway.harness import Gateway, responder, sql

TEXTS = ["ارسال خیلی سریع بود", "کیفیت پارچه عالیه", "قیمتش مناسب بود", "رنگش با عکس فرق داشت"]


async def tag_service(data: bytes) -> bytes:
    request = TagTextsRequest.model_validate_json(data)
    tags = [ScoredTag(id=request.tags[0].id, title=request.tags[0].title, probability=0.7)] if request.tags else []
    return TagReply(model_id="m", items=[ItemResult(tags=tags) for _ in request.texts]).model_dump_json().encode()


async def input_items(gw: Gateway) -> list[tuple[str, str]]:
    await kept_inputs_settled()  # the tag calls' writes run after their answers
    rows = await sql(gw.settings.database_url, "SELECT content, origin FROM data_item ORDER BY id")
    return [(r["content"], r["origin"]) for r in rows]


async def test_keep_inputs_off_leaves_nothing_and_on_keeps_each_text_once_bounded(
    gateway_factory: Callable[..., Any], nats_url: str
) -> None:
    async with gateway_factory(max_input_items=3) as gw:
        token = await gw.token("acme")
        created = await gw.post("/api/create_dataset/", {"dataset": "shop", "kind": "text"}, token)
        assert created.json()["keep_inputs"] is False
        tag = (await gw.post("/api/create_tag/", {"dataset": "shop", "title": "ارسال"}, token)).json()["tag_id"]
        async with responder(nats_url, TEXT_TAG, tag_service):
            off = await gw.post("/api/tag_texts/", {"dataset": "shop", "contents": TEXTS[:2]}, token)
            assert off.status_code == 200, off.text
            assert await input_items(gw) == []  # off: a tag call leaves no row behind

            updated = await gw.post("/api/update_dataset/", {"dataset": "shop", "keep_inputs": True}, token)
            assert updated.status_code == 200, updated.text
            assert updated.json() == {"dataset": "shop", "title": "shop", "kind": "text", "state": "untrained",
                                      "keep_inputs": True} | {"state": updated.json()["state"]}
            listed = (await gw.post("/api/list_datasets/", {}, token)).json()
            assert [d["keep_inputs"] for d in listed] == [True]
            # The same text twice (and again in a second call) is one item; the answer is unchanged.
            on = await gw.post("/api/tag_texts/", {"dataset": "shop", "contents": [TEXTS[0], TEXTS[0]]}, token)
            assert on.json() == off.json()[:1] * 2
            await gw.post("/api/tag_texts/", {"dataset": "shop", "contents": [TEXTS[0] + " "]}, token)
            assert await input_items(gw) == [(TEXTS[0], "input")]
            # Beyond max_input_items the oldest inputs go (within one call, in no particular order).
            await gw.post("/api/tag_texts/", {"dataset": "shop", "contents": TEXTS[1:]}, token)
            assert set(await input_items(gw)) == {(t, "input") for t in TEXTS[1:]}

            # Reporting a kept input makes it a reported item (same item), which the bound no longer drops.
            report = await gw.post("/api/report_text_tags/",
                                   [{"content": TEXTS[1], "tag_id": tag, "positive": True}], token)
            assert report.status_code == 200, report.text
            assert set(await input_items(gw)) == {(TEXTS[1], "report"), (TEXTS[2], "input"), (TEXTS[3], "input")}
            await gw.post("/api/tag_texts/", {"dataset": "shop", "contents": ["تازه", "تازه‌تر", "جدید"]}, token)
            assert (TEXTS[1], "report") in await input_items(gw)
            assert len([o for _, o in await input_items(gw) if o == "input"]) == 3

            # Off again (the cached view of tagging follows at once): nothing more is kept.
            before = await input_items(gw)
            await gw.post("/api/update_dataset/", {"dataset": "shop", "keep_inputs": False, "title": "فروشگاه"},
                          token)
            await gw.post("/api/tag_texts/", {"dataset": "shop", "contents": ["یک متن دیگر"]}, token)
            assert await input_items(gw) == before
        info = (await gw.post("/api/list_datasets/", {}, token)).json()
        assert info[0]["title"] == "فروشگاه" and info[0]["keep_inputs"] is False


async def test_keep_inputs_on_create_keeps_image_urls(gw: Gateway, nats_url: str) -> None:
    token = await gw.token("acme")
    created = await gw.post("/api/create_dataset/", {"dataset": "iran", "kind": "image", "keep_inputs": True}, token)
    assert created.json()["keep_inputs"] is True
    await gw.post("/api/create_tag/", {"dataset": "iran", "title": "برج"}, token)

    async def vision(data: bytes) -> bytes:
        request = TagImagesRequest.model_validate_json(data)
        items = [ItemResult(error="could not fetch", error_code="fetch_failed") if "broken" in (i.url or "")
                 else ItemResult(tags=[]) for i in request.images]
        return TagReply(model_id="v", items=items).model_dump_json().encode()

    urls = ["https://example.org/a.jpg", "https://example.org/broken.jpg"]
    async with responder(nats_url, VISION_TAG, vision):
        response = await gw.post("/api/tag_images/", {"dataset": "iran", "image_urls": urls}, token)
    assert response.status_code == 200, response.text
    await kept_inputs_settled()
    rows = await sql(gw.settings.database_url, "SELECT kind, source_url, origin, media FROM data_item")
    # The image that could not be fetched is not kept.
    assert [(r["kind"], r["source_url"], r["origin"], r["media"]) for r in rows] == [("image", urls[0], "input", None)]


async def test_update_dataset_and_suggestions_are_per_account(gw: Gateway) -> None:
    mine, theirs = await gw.token("acme"), await gw.token("other")
    await gw.post("/api/create_dataset/", {"dataset": "shop"}, mine)
    their_tag = (await gw.post("/api/create_tag/", {"dataset": "theirs", "title": "x"}, theirs)).json()["tag_id"]
    for path, body in [("/api/update_dataset/", {"dataset": "theirs", "keep_inputs": True}),
                       ("/api/suggest_labels/", {"dataset": "theirs"}),
                       ("/api/suggest_labels/", {"dataset": "shop", "tag_id": their_tag}),
                       ("/api/search/", {"dataset": "theirs", "text": "x"})]:
        response = await gw.post(path, body, mine)
        assert response.status_code == 404, (path, response.text)
        assert set(response.json()) == {"error", "detail"}
    rows = await sql(gw.settings.database_url, "SELECT keep_inputs FROM dataset WHERE name = 'theirs'")
    assert rows[0]["keep_inputs"] is False
    for path, body in [("/api/suggest_labels/", {"dataset": "shop", "limit": 0}),
                       ("/api/suggest_labels/", {"dataset": "shop", "limit": 501}),
                       ("/api/update_dataset/", {"dataset": "shop", "keep_inputs": "yes"})]:
        assert (await gw.post(path, body, mine)).status_code == 422, (path, body)


async def add_items(gw: Gateway, dataset: str, texts: list[str], origin: str = "input") -> list[int]:
    ids = []
    for text in texts:
        rows = await sql(
            gw.settings.database_url,
            "INSERT INTO data_item (dataset_id, kind, content, content_hash, origin) "
            "SELECT id, 'text', $2, $3, $4 FROM dataset WHERE name = $1 RETURNING id",
            dataset, text, hashlib.sha256(text.encode()).hexdigest(), origin)
        ids.append(rows[0]["id"])
    return ids


async def test_suggest_labels_answers_open_suggestions_best_first(gw: Gateway) -> None:
    token = await gw.token("acme")
    await gw.post("/api/create_dataset/", {"dataset": "shop", "kind": "text"}, token)
    a = (await gw.post("/api/create_tag/", {"dataset": "shop", "title": "ارسال"}, token)).json()["tag_id"]
    b = (await gw.post("/api/create_tag/", {"dataset": "shop", "title": "کیفیت"}, token)).json()["tag_id"]
    ids = await add_items(gw, "shop", TEXTS)
    # What the trainer writes after a fit (trainer.suggestions), ranked.
    for rank, (item, tag, reason, p) in enumerate([(ids[0], a, "suspect", 0.04), (ids[1], b, "uncertain", 0.52),
                                                   (ids[2], a, "uncertain", 0.47), (ids[3], b, "uncertain", 0.5)]):
        await sql(gw.settings.database_url,
                  "INSERT INTO suggestion (dataset_id, item_id, tag_id, reason, probability, rank, version) "
                  "SELECT dataset_id, $1, $2, $3, $4, $5, 1 FROM data_item WHERE id = $1", item, tag, reason, p, rank)
    response = await gw.post("/api/suggest_labels/", {"dataset": "shop"}, token)
    assert response.status_code == 200, response.text
    assert response.json() == [
        {"item_id": ids[0], "content": TEXTS[0], "reason": "suspect", "tag_id": a, "probability": 0.04},
        {"item_id": ids[1], "content": TEXTS[1], "reason": "uncertain", "tag_id": b, "probability": 0.52},
        {"item_id": ids[2], "content": TEXTS[2], "reason": "uncertain", "tag_id": a, "probability": 0.47},
        {"item_id": ids[3], "content": TEXTS[3], "reason": "uncertain", "tag_id": b, "probability": 0.5},
    ]
    only_b = await gw.post("/api/suggest_labels/", {"dataset": "shop", "tag_id": b, "limit": 1}, token)
    assert [s["item_id"] for s in only_b.json()] == [ids[1]]
    info = (await gw.post("/api/dataset_info/", {"dataset": "shop"}, token)).json()
    assert info["suggestions"] == 4

    # Reports close the loop: the suspect re-confirmed, an uncertain item labelled (for another tag).
    await gw.post("/api/report_text_tags/", [{"content": TEXTS[0], "tag_id": a, "positive": True},
                                             {"content": TEXTS[1], "tag_id": a, "positive": True}], token)
    left = (await gw.post("/api/suggest_labels/", {"dataset": "shop"}, token)).json()
    assert [s["item_id"] for s in left] == [ids[2], ids[3]]
    assert (await gw.post("/api/dataset_info/", {"dataset": "shop"}, token)).json()["suggestions"] == 2


def unit(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = (v / np.linalg.norm(v)).astype(np.float32)
    return out


async def test_search_ranks_items_by_cosine_with_their_reports(gw: Gateway, nats_url: str) -> None:
    token = await gw.token("acme")
    await gw.post("/api/create_dataset/", {"dataset": "shop", "kind": "text"}, token)
    tag = (await gw.post("/api/create_tag/", {"dataset": "shop", "title": "ارسال"}, token)).json()["tag_id"]
    await gw.post("/api/report_text_tags/", [{"content": TEXTS[0], "tag_id": tag, "positive": True}], token)
    ids = [(await sql(gw.settings.database_url, "SELECT id FROM data_item"))[0]["id"]]
    ids += await add_items(gw, "shop", TEXTS[1:])
    rng = np.random.default_rng(0)
    vectors = {i: unit(rng.normal(size=8)) for i in ids}
    for item_id, v in vectors.items():
        await sql(gw.settings.database_url,
                  "INSERT INTO embedding (item_id, model_id, dim, vector) VALUES ($1, 'e5', 8, $2)",
                  item_id, v.tobytes())
    # Another model's vectors are never compared with this model's queries.
    await sql(gw.settings.database_url,
              "INSERT INTO embedding (item_id, model_id, dim, vector) VALUES ($1, 'old', 8, $2)", ids[3],
              unit(np.ones(8)).tobytes())
    query = unit(vectors[ids[0]] + 0.5 * vectors[ids[2]])

    async def embed(data: bytes) -> bytes:
        request = EmbedTextsRequest.model_validate_json(data)
        assert request.texts == ["ارسال کی میرسه"]
        reply = EmbedReply(model_id="e5", dim=8, vectors=base64.b64encode(query[None].tobytes()))
        return reply.model_dump_json().encode()

    async with responder(nats_url, TEXT_EMBED, embed):
        response = await gw.post("/api/search/", {"dataset": "shop", "text": "ارسال کی میرسه", "limit": 3}, token)
    assert response.status_code == 200, response.text
    hits = response.json()
    expected = sorted(ids, key=lambda i: -float(vectors[i] @ query))[:3]
    assert [h["item_id"] for h in hits] == expected
    assert expected[:2] == [ids[0], ids[2]]
    assert hits[0] == {"item_id": ids[0], "score": round(float(vectors[ids[0]] @ query), 4), "content": TEXTS[0],
                       "reports": [[tag, True]]}
    assert hits[1]["reports"] == []

    wrong = await gw.post("/api/search/", {"dataset": "shop", "image_url": "https://example.org/a.jpg"}, token)
    assert wrong.status_code == 400 and wrong.json()["error"] == "wrong_dataset_kind"
    both = await gw.post("/api/search/", {"dataset": "shop", "text": "x", "image_url": "https://e.org/a"}, token)
    neither = await gw.post("/api/search/", {"dataset": "shop"}, token)
    assert both.status_code == neither.status_code == 422
    too_many = await gw.post("/api/search/", {"dataset": "shop", "text": "x", "limit": 101}, token)
    assert too_many.status_code == 422


async def test_search_by_image_url_fetches_through_vision_and_reports_fetch_errors(
    gw: Gateway, nats_url: str
) -> None:
    token = await gw.token("acme")
    await gw.post("/api/create_dataset/", {"dataset": "iran", "kind": "image"}, token)
    rows = await sql(gw.settings.database_url,
                     "INSERT INTO data_item (dataset_id, kind, content_hash, source_url) "
                     "SELECT id, 'image', 'h1', 'https://example.org/milad.jpg' FROM dataset RETURNING id")
    item = rows[0]["id"]
    v = unit(np.arange(1, 5, dtype=np.float32))
    await sql(gw.settings.database_url,
              "INSERT INTO embedding (item_id, model_id, dim, vector) VALUES ($1, 'img', 4, $2)", item, v.tobytes())

    async def embed(data: bytes) -> bytes:
        request = EmbedImagesRequest.model_validate_json(data)
        url = request.images[0].url or ""
        result = (ImageEmbedding(error="HTTP 404", error_code="fetch_failed", error_status=502) if "gone" in url
                  else ImageEmbedding(vector=base64.b64encode(v.tobytes()), sha256="ab" * 32))
        return EmbedImagesReply(model_id="img", dim=4, items=[result]).model_dump_json().encode()

    async with responder(nats_url, VISION_EMBED, embed):
        found = await gw.post("/api/search/", {"dataset": "iran", "image_url": "https://example.org/q.jpg"}, token)
        gone = await gw.post("/api/search/", {"dataset": "iran", "image_url": "https://example.org/gone.jpg"}, token)
    assert found.status_code == 200, found.text
    assert found.json() == [{"item_id": item, "score": 1.0, "image": f"/api/items/{item}/image", "reports": []}]
    assert gone.status_code == 502 and gone.json()["error"] == "fetch_failed"


async def test_keeping_inputs_adds_little_to_a_tag_call(gateway_factory: Callable[..., Any], nats_url: str) -> None:
    """Median latency of tag_texts (4 texts, fake text service) with keep_inputs off and on, printed."""
    async with gateway_factory(rate_per_minute=0) as gw:  # one account as fast as it can: no rate limit
        await measure_keep_inputs(gw, nats_url)


async def measure_keep_inputs(gw: Gateway, nats_url: str) -> None:
    token = await gw.token("acme")
    for name, keep in (("off", False), ("on", True)):
        await gw.post("/api/create_dataset/", {"dataset": name, "kind": "text", "keep_inputs": keep}, token)
        await gw.post("/api/create_tag/", {"dataset": name, "title": "ارسال"}, token)
    medians = {}
    async with responder(nats_url, TEXT_TAG, tag_service):
        for round_ in range(2):  # the first round warms both paths up
            for name in ("off", "on"):
                times = []
                for i in range(60):
                    contents = [f"{t} {round_} {i}" for t in TEXTS]
                    start = time.perf_counter()
                    r = await gw.post("/api/tag_texts/", {"dataset": name, "contents": contents}, token)
                    times.append(time.perf_counter() - start)
                    assert r.status_code == 200
                medians[name] = statistics.median(times)
    await kept_inputs_settled()
    kept = await sql(gw.settings.database_url, "SELECT count(*) AS n FROM data_item")
    assert kept[0]["n"] == 2 * 60 * len(TEXTS)  # only the "on" dataset's texts, both rounds
    print(f"tag_texts median: keep_inputs off {medians['off'] * 1e3:.1f} ms, on {medians['on'] * 1e3:.1f} ms")
    assert medians["on"] - medians["off"] < 0.005  # the write is not awaited by the call


async def test_a_stopping_gateway_finishes_the_keep_inputs_writes_it_started(
    gateway_factory: Callable[..., Any], nats_url: str
) -> None:
    """The writes run after the answers: shutdown waits for them (bounded by the drain timeout), losing none.
    A lock on the dataset row holds them in flight until a second after the shutdown began."""
    import asyncpg

    async with gateway_factory() as gw:
        token = await gw.token("acme")
        await gw.post("/api/create_dataset/", {"dataset": "shop", "kind": "text", "keep_inputs": True}, token)
        await gw.post("/api/create_tag/", {"dataset": "shop", "title": "ارسال"}, token)
        database_url = gw.settings.database_url
        holder = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT id FROM dataset WHERE name = 'shop' FOR UPDATE")
        async with responder(nats_url, TEXT_TAG, tag_service):
            answered = await asyncio.gather(*(
                gw.post("/api/tag_texts/", {"dataset": "shop", "contents": [text]}, token) for text in TEXTS))
        assert [r.status_code for r in answered] == [200] * len(TEXTS)

        async def release() -> None:
            await asyncio.sleep(1.0)
            await held.rollback()

        releasing = asyncio.create_task(release())
    try:
        rows = await sql(database_url, "SELECT content FROM data_item WHERE origin = 'input'")
        assert sorted(r["content"] for r in rows) == sorted(TEXTS)
    finally:
        await releasing
        await holder.close()
