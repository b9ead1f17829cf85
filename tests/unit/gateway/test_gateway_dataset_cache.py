"""The gateway's cache of what tagging reads of a dataset: hits skip Postgres, and every change that
tagging must see (tags, their titles and activity, the kind, a new head) reaches it at once, in this
replica and in others, or within the TTL when a broadcast is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event

from gateway.infra.datasetcache import DatasetCache, DatasetView
from shared.bus import Bus
from shared.schemas.events import DatasetsChanged
from shared.schemas.inference import HeadRef, ItemResult, ScoredTag, TagRef, TagReply, TagTextsRequest
from shared.subjects import DATASETS_CHANGED, TEXT_TAG
from tests.unit.gateway.harness import Gateway, eventually, responder, sql
from trainer.consumers import announce_new_head


def _view(dataset_id: int, version: int | None = None, tags: tuple[int, ...] = (1,)) -> DatasetView:
    return DatasetView(dataset_id, "text", HeadRef(dataset_id=dataset_id, version=version),
                       tuple(TagRef(id=t, title=f"t{t}") for t in tags))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _keep(cache: DatasetCache, account_id: int, name: str, view: DatasetView) -> None:
    """Cache ``view`` the way a request does: a miss that loads it."""
    assert await cache.get_or_load(account_id, name, _loader(view)) == view


async def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    cache = DatasetCache(2.0, clock=clock)
    await _keep(cache, 1, "a", _view(10))
    clock.now += 1.9
    assert cache.get(1, "a") == _view(10)
    clock.now += 0.2
    assert cache.get(1, "a") is None


async def test_invalidation_drops_every_entry_of_that_dataset_only() -> None:
    cache = DatasetCache(60.0)
    await _keep(cache, 1, "a", _view(10))
    await _keep(cache, 2, "b", _view(20))
    cache.invalidate([10, 99])
    assert cache.get(1, "a") is None
    assert cache.get(2, "b") == _view(20)


async def test_a_load_that_overlapped_an_invalidation_is_not_stored() -> None:
    cache = DatasetCache(60.0)

    async def load() -> DatasetView:
        read = _view(10)  # a reader reads dataset 10 ...
        cache.invalidate([10])  # ... a tag change commits meanwhile, so what it read may be the old state
        return read

    assert await cache.get_or_load(1, "a", load) == _view(10)  # answered, but not kept
    assert cache.get(1, "a") is None
    await _keep(cache, 1, "a", _view(10))  # the next load is kept
    assert cache.get(1, "a") is not None


async def test_the_cache_is_bounded_and_can_be_turned_off() -> None:
    cache = DatasetCache(60.0, max_entries=2)
    for i in range(3):
        await _keep(cache, 1, f"d{i}", _view(i))
    assert [cache.get(1, f"d{i}") for i in range(3)] == [None, _view(1), _view(2)]  # the oldest went
    cache.invalidate([1, 2])
    assert cache.get(1, "d1") is None and cache.get(1, "d2") is None
    off = DatasetCache(0)
    await _keep(off, 1, "a", _view(10))
    assert off.get(1, "a") is None


async def test_concurrent_misses_share_one_load() -> None:
    cache = DatasetCache(60.0)
    calls = 0
    started, gate = asyncio.Event(), asyncio.Event()

    async def load() -> DatasetView:
        nonlocal calls
        calls += 1
        started.set()
        await gate.wait()
        return _view(10)

    waiters = [asyncio.create_task(cache.get_or_load(1, "a", load)) for _ in range(10)]
    await started.wait()  # the load runs after every waiter has asked (tasks start in order)
    waiters[0].cancel()  # a client that went away does not cancel the load for the others
    gate.set()
    results = await asyncio.gather(*waiters[1:])
    assert calls == 1 and all(r == _view(10) for r in results)
    assert cache.get(1, "a") == _view(10)


async def test_a_failed_load_reaches_every_waiter_and_is_not_cached() -> None:
    cache = DatasetCache(60.0)
    calls = 0

    async def load() -> DatasetView:
        nonlocal calls
        calls += 1
        raise LookupError("no such dataset")

    results = await asyncio.gather(*(cache.get_or_load(1, "a", load) for _ in range(3)), return_exceptions=True)
    assert calls == 1 and all(isinstance(r, LookupError) for r in results)
    assert cache.get(1, "a") is None
    assert await cache.get_or_load(1, "a", _loader(_view(10))) == _view(10)  # the next miss loads again


def _loader(view: DatasetView) -> Callable[[], Awaitable[DatasetView]]:
    async def load() -> DatasetView:
        return view

    return load


# Through the running app: a real text_service stand-in on NATS records what the gateway asks.


@asynccontextmanager
async def recorder(nats_url: str) -> AsyncIterator[list[TagTextsRequest]]:
    seen: list[TagTextsRequest] = []

    async def text_service(data: bytes) -> bytes:
        request = TagTextsRequest.model_validate_json(data)
        seen.append(request)
        tags = [ScoredTag(id=t.id, title=t.title, probability=0.9) for t in request.tags[:1]]
        return TagReply(model_id="m", items=[ItemResult(tags=tags) for _ in request.texts]).model_dump_json().encode()

    async with responder(nats_url, TEXT_TAG, text_service):
        yield seen


async def _tag(gw: Gateway, token: str, dataset: str = "reviews") -> Any:
    response = await gw.post("/api/tag_texts/", {"dataset": dataset, "contents": ["عالی بود"]}, token)
    assert response.status_code == 200, response.text
    return response.json()


async def _two_tags(gw: Gateway, token: str) -> tuple[int, int]:
    # Kind given up front: a first use that fixes the kind is a change, and drops the entry once more.
    await gw.post("/api/create_dataset/", {"dataset": "reviews", "kind": "text"}, token)
    a = (await gw.post("/api/create_tag/", {"dataset": "reviews", "title": "خوب"}, token)).json()["tag_id"]
    b = (await gw.post("/api/create_tag/", {"dataset": "reviews", "title": "بد"}, token)).json()["tag_id"]
    return a, b


def _count_statements(gw: Gateway) -> Callable[[], list[str]]:
    statements: list[str] = []

    def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(gw.state.engine.sync_engine, "before_cursor_execute", on_execute)
    return lambda: statements


async def test_repeated_tagging_reads_the_dataset_from_postgres_once(gw: Gateway, nats_url: str) -> None:
    token = await gw.token("acme")
    await _two_tags(gw, token)
    statements = _count_statements(gw)
    async with recorder(nats_url) as seen:
        for _ in range(5):
            await _tag(gw, token)
    reads = [s for s in statements() if "FROM dataset" in s or "FROM tag" in s]
    assert len(reads) == 2, reads  # the dataset and its active tags, for the first request only
    assert len(seen) == 5 and all(len(r.tags) == 2 for r in seen)


async def test_a_burst_of_first_requests_reads_the_dataset_once(gw: Gateway, nats_url: str) -> None:
    token = await gw.token("acme")
    await _two_tags(gw, token)
    statements = _count_statements(gw)
    async with recorder(nats_url) as seen:
        await asyncio.gather(*(_tag(gw, token) for _ in range(20)))
    assert len([s for s in statements() if "FROM dataset" in s]) == 1
    assert len(seen) >= 1 and sum(len(r.texts) for r in seen) == 20


async def test_tag_changes_reach_the_very_next_request(gw: Gateway, nats_url: str) -> None:
    token = await gw.token("acme")
    a, b = await _two_tags(gw, token)
    async with recorder(nats_url) as seen:
        await _tag(gw, token)
        await gw.post("/api/update_tag/", {"tag_id": a, "active": False}, token)
        await _tag(gw, token)
        await gw.post("/api/update_tag/", {"tag_id": b, "title": "ناراضی"}, token)
        await _tag(gw, token)
        c = (await gw.post("/api/create_tag/", {"dataset": "reviews", "title": "تازه"}, token)).json()["tag_id"]
        await _tag(gw, token)
        await gw.post("/api/delete_tag/", {"tag_id": b}, token)
        last = await _tag(gw, token)
    assert [[(t.id, t.title) for t in r.tags] for r in seen] == [
        [(a, "خوب"), (b, "بد")],
        [(b, "بد")],
        [(b, "ناراضی")],
        [(b, "ناراضی"), (c, "تازه")],
        [(c, "تازه")],
    ]
    assert last[0]["tags"][0]["id"] == c


async def test_first_use_fixes_the_kind_and_then_caches(gw: Gateway, nats_url: str) -> None:
    token = await gw.token("acme")
    await gw.post("/api/create_tag/", {"dataset": "fresh", "title": "خوب"}, token)  # no kind yet
    async with recorder(nats_url) as seen:
        await _tag(gw, token, "fresh")  # fixes the kind to text: a change, so nothing cached yet
        statements = _count_statements(gw)
        for _ in range(3):
            await _tag(gw, token, "fresh")
    assert len([s for s in statements() if "FROM dataset" in s]) == 1
    assert len(seen) == 4
    rows = await sql(gw.settings.database_url, "SELECT kind FROM dataset WHERE name = 'fresh'")
    assert rows[0]["kind"] == "text"


async def test_a_cached_dataset_still_refuses_the_other_kind(gw: Gateway, nats_url: str) -> None:
    token = await gw.token("acme")
    await _two_tags(gw, token)
    async with recorder(nats_url):
        await _tag(gw, token)  # caches the dataset
    response = await gw.post("/api/tag_images/", {"dataset": "reviews", "image_urls": ["http://x/a.jpg"]}, token)
    assert response.status_code == 400
    assert response.json()["error"] == "wrong_dataset_kind"


async def test_another_replicas_tag_change_arrives_by_broadcast(
    gateway_factory: Callable[..., Any], nats_url: str
) -> None:
    async with gateway_factory() as one, gateway_factory() as two:
        token = await one.token("acme")
        a, b = await _two_tags(one, token)
        async with recorder(nats_url) as seen:
            await _tag(one, token)  # replica one caches both tags
            assert (await two.post("/api/update_tag/", {"tag_id": a, "active": False}, token)).status_code == 200

            async def one_sees_it() -> bool:
                await _tag(one, token)
                return [t.id for t in seen[-1].tags] == [b]

            assert await eventually(one_sees_it, timeout_s=3.0)


async def test_a_new_head_from_the_trainer_is_used_at_once(gw: Gateway, nats_url: str) -> None:
    token = await gw.token("acme")
    await _two_tags(gw, token)
    bus = await Bus.connect(nats_url, "trainer-test")
    try:
        async with recorder(nats_url) as seen:
            await _tag(gw, token)
            dataset_id = seen[0].head.dataset_id
            # What the trainer commits, then announces (trainer/consumers.py).
            await sql(gw.settings.database_url, "UPDATE dataset SET head_version = 7 WHERE id = $1", dataset_id)
            await announce_new_head(bus, dataset_id)

            async def new_version_used() -> bool:
                await _tag(gw, token)
                return seen[-1].head.version == 7

            assert await eventually(new_version_used, timeout_s=3.0)
    finally:
        await bus.close()
    assert seen[0].head.version is None


async def test_without_a_broadcast_a_change_shows_within_the_ttl(
    gateway_factory: Callable[..., Any], nats_url: str
) -> None:
    async with gateway_factory(dataset_cache_s=0.3) as gw:
        token = await gw.token("acme")
        a, b = await _two_tags(gw, token)
        async with recorder(nats_url) as seen:
            await _tag(gw, token)
            # A change no gateway saw (written straight to Postgres): no invalidation, only the TTL.
            await sql(gw.settings.database_url, "UPDATE tag SET active = false WHERE id = $1", a)
            await _tag(gw, token)
            assert [t.id for t in seen[-1].tags] == [a, b]  # still the cached view

            async def expired() -> bool:
                await _tag(gw, token)
                return [t.id for t in seen[-1].tags] == [b]

            assert await eventually(expired, timeout_s=2.0)


async def test_a_malformed_broadcast_is_ignored_and_the_next_one_still_works(
    gateway_factory: Callable[..., Any], nats_url: str
) -> None:
    bus = await Bus.connect(nats_url, "noise")
    try:
        # A long TTL: only a broadcast can drop an entry within this test.
        async with gateway_factory(dataset_cache_s=60) as gw:
            token = await gw.token("acme")
            a, b = await _two_tags(gw, token)
            await gw.post("/api/create_dataset/", {"dataset": "other", "kind": "text"}, token)
            c = (await gw.post("/api/create_tag/", {"dataset": "other", "title": "پیش"}, token)).json()["tag_id"]
            async with recorder(nats_url) as seen:
                await _tag(gw, token)  # both cached
                dataset_id = seen[-1].head.dataset_id
                await _tag(gw, token, "other")
                other_id = seen[-1].head.dataset_id
                await sql(gw.settings.database_url, "UPDATE tag SET active = false WHERE id = $1", a)
                await sql(gw.settings.database_url, "UPDATE tag SET title = 'پس' WHERE id = $1", c)
                await bus.nc.publish(DATASETS_CHANGED, b"not json")
                await bus.broadcast(DATASETS_CHANGED, DatasetsChanged(dataset_ids=[]))
                await bus.broadcast(DATASETS_CHANGED, DatasetsChanged(dataset_ids=[other_id]))

                async def other_dropped() -> bool:
                    await _tag(gw, token, "other")
                    return [(t.id, t.title) for t in seen[-1].tags] == [(c, "پس")]

                # One subscription delivers in order: the last message's effect shows the first two were handled.
                assert await eventually(other_dropped, timeout_s=3.0)
                await _tag(gw, token)
                assert [t.id for t in seen[-1].tags] == [a, b]  # neither of them dropped this entry
                await bus.broadcast(DATASETS_CHANGED, DatasetsChanged(dataset_ids=[dataset_id]))

                async def dropped() -> bool:
                    await _tag(gw, token)
                    return [t.id for t in seen[-1].tags] == [b]

                assert await eventually(dropped, timeout_s=3.0)  # the listener survived the bad message
    finally:
        await bus.close()
