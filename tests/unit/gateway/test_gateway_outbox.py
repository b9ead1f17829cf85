"""Reports and training requests reach JetStream after commit; rows left unpublished are swept."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from shared.bus import ensure_streams
from shared.schemas.events import ReportEvent, TrainRequest
from shared.subjects import EVENTS_STREAM, TRAIN_EVENT, report_subject, train_subject
from tests.unit.gateway.harness import Gateway, eventually, sql


@pytest.fixture
async def events(nats_url: str) -> AsyncIterator[JetStreamContext]:
    """A fresh events stream: ids restart with the cleaned database, so old message ids must not dedup."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    with contextlib.suppress(NotFoundError):
        await js.delete_stream(EVENTS_STREAM)
    await ensure_streams(js)
    yield js
    await nc.close()


async def stream_messages(js: JetStreamContext) -> list[tuple[str, dict[str, Any], str]]:
    """(subject, payload, Nats-Msg-Id) of every message in the events stream."""
    info = await js.stream_info(EVENTS_STREAM)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        msg = await js.get_msg(EVENTS_STREAM, seq)
        out.append((msg.subject, json.loads(msg.data or b"{}"), (msg.headers or {}).get("Nats-Msg-Id", "")))
    return out


async def test_reports_and_train_requests_are_published_after_commit(
    events: JetStreamContext, gw: Gateway
) -> None:
    token = await gw.token("acme")
    tag_id = (await gw.post("/api/create_tag/", {"dataset": "d", "title": "t"}, token)).json()["tag_id"]
    answer = await gw.post(
        "/api/report_text_tags/",
        [
            {"content": "متن یک", "tag_id": tag_id, "positive": True},
            {"content": "متن دو", "tag_id": tag_id, "positive": False},
        ],
        token,
    )
    await gw.post("/api/train_dataset/", {"dataset": "d"}, token)

    async def three() -> list[Any]:
        found = await stream_messages(events)
        return found if len(found) >= 3 else []

    found = await eventually(three)
    dataset_id = (await sql(gw.settings.database_url, "SELECT id FROM dataset"))[0]["id"]
    reports = [(s, p, m) for s, p, m in found if s == report_subject(dataset_id)]
    items = {ReportEvent.model_validate(p).item_id: ReportEvent.model_validate(p) for _, p, _ in reports}
    assert set(items) == {a["id"] for a in answer.json()}
    assert sorted(e.positive for e in items.values()) == [False, True]
    assert all(m.startswith(f"report-{ReportEvent.model_validate(p).report_id}-") for _, p, m in reports)
    trains = [TrainRequest.model_validate(p) for s, p, _ in found if s == train_subject(dataset_id)]
    assert [(t.dataset_id, t.reason) for t in trains] == [(dataset_id, "api")]
    assert await eventually(lambda: _none_unpublished(gw))


async def _none_unpublished(gw: Gateway) -> bool:
    return not await sql(gw.settings.database_url, "SELECT id FROM outbox WHERE published_at IS NULL")


async def test_a_row_left_unpublished_by_a_crash_is_swept(events: JetStreamContext, gw: Gateway) -> None:
    # As if a gateway committed this row and died before publishing it.
    event = ReportEvent(dataset_id=77, item_id=5, tag_id=9, positive=True, report_id=3)
    await sql(
        gw.settings.database_url,
        "INSERT INTO outbox (subject, msg_id, payload) VALUES ($1, $2, $3::jsonb)",
        report_subject(77),
        "report-3-crash",
        event.model_dump_json(),
    )
    found = await eventually(lambda: _subjects_with(events, report_subject(77)))
    assert [(p, m) for _, p, m in found] == [(event.model_dump(), "report-3-crash")]
    assert await eventually(lambda: _none_unpublished(gw))


async def _subjects_with(js: JetStreamContext, subject: str) -> list[tuple[str, dict[str, Any], str]]:
    return [m for m in await stream_messages(js) if m[0] == subject]


async def test_a_failed_request_publishes_nothing(events: JetStreamContext, gw: Gateway) -> None:
    token = await gw.token("acme")
    tag_id = (await gw.post("/api/create_tag/", {"dataset": "d", "title": "t"}, token)).json()["tag_id"]
    bad = [
        {"content": "متن", "tag_id": tag_id, "positive": True},
        {"content": "x", "tag_id": 999, "positive": True},
    ]
    assert (await gw.post("/api/report_text_tags/", bad, token)).status_code == 404
    assert await sql(gw.settings.database_url, "SELECT id FROM outbox") == []
    assert await sql(gw.settings.database_url, "SELECT id FROM data_item") == []


async def test_event_ids_stay_unique_when_the_database_is_recreated_behind_nats(
    events: JetStreamContext, gw: Gateway
) -> None:
    """Row ids start again after a restore or a new database; the stream (and its duplicate window) did not."""
    token = await gw.token("acme")
    await gw.post("/api/create_tag/", {"dataset": "d", "title": "t"}, token)
    assert (await gw.post("/api/train_dataset/", {"dataset": "d"}, token)).status_code == 200
    assert await eventually(lambda: _none_unpublished(gw))
    await sql(gw.settings.database_url, "TRUNCATE outbox RESTART IDENTITY")  # the sequence rewinds
    await sql(gw.settings.database_url, "UPDATE dataset SET state = 'trained'")
    assert (await gw.post("/api/train_dataset/", {"dataset": "d"}, token)).status_code == 200
    assert await eventually(lambda: _none_unpublished(gw))

    async def two_trains() -> list[tuple[str, dict[str, Any], str]]:
        found = [m for m in await stream_messages(events) if m[0].startswith(TRAIN_EVENT)]
        return found if len(found) == 2 else []

    trains = await eventually(two_trains)
    ids = [m for _, _, m in trains]
    assert len(set(ids)) == 2 and all(m.startswith("train-") for m in ids)
