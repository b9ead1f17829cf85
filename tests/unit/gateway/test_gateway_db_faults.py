"""Database faults answer 4xx or 503, never 500: a tag deleted while it is reported (404), connections terminated
under the gateway (the work runs again on a fresh connection, else 503)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import asyncpg
import httpx
from sqlalchemy.exc import DBAPIError

from gateway.infra.dbfaults import lost_before_commit, unavailable
from tests.unit.gateway.harness import Gateway, eventually, sql

TERMINATE = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)
WAITING = (
    "SELECT pid FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
)


async def _waiting(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Gateway backends waiting on a lock now (the activity view is a snapshot per transaction: drop it first)."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return await conn.fetch(WAITING)


async def _tags(gw: Gateway, token: str, n: int) -> list[int]:
    ids = []
    for i in range(n):
        response = await gw.post("/api/create_tag/", {"dataset": "d", "title": f"t{i}"}, token)
        ids.append(response.json()["tag_id"])
    return ids


async def test_delete_tag_racing_reports_answers_200_or_404_and_keeps_the_database_consistent(gw: Gateway) -> None:
    token = await gw.token("acme")
    tag_ids = await _tags(gw, token, 40)
    calls: list[Awaitable[httpx.Response]] = []
    for i, tag_id in enumerate(tag_ids):
        report = gw.post("/api/report_text_tags/", [{"content": f"متن {i}", "tag_id": tag_id, "positive": True}], token)
        delete = gw.post("/api/delete_tag/", {"tag_id": tag_id}, token)
        calls += [report, delete] if i % 2 else [delete, report]
    answers = await asyncio.gather(*calls)
    pairs = [sorted(answers[i : i + 2], key=lambda r: "deleted_reports" in r.text) for i in range(0, 80, 2)]
    for report, delete in pairs:
        assert report.status_code in (200, 404), report.text
        assert delete.status_code == 200, delete.text
        if report.status_code == 404:
            assert report.json()["error"] == "tag_not_found"
        # A report answered 200 was committed before the delete, which then deleted it; a 404 wrote nothing.
        assert delete.json()["deleted_reports"] == (1 if report.status_code == 200 else 0)
    assert await sql(gw.settings.database_url, "SELECT count(*) AS n FROM report") == [(0,)]
    assert await sql(gw.settings.database_url, "SELECT count(*) AS n FROM tag") == [(0,)]


async def test_update_tag_racing_delete_tag_answers_200_or_404(gw: Gateway) -> None:
    token = await gw.token("acme")
    tag_ids = await _tags(gw, token, 20)
    answers = await asyncio.gather(*(
        call
        for tag_id in tag_ids
        for call in (
            gw.post("/api/update_tag/", {"tag_id": tag_id, "title": "renamed", "active": False}, token),
            gw.post("/api/delete_tag/", {"tag_id": tag_id}, token),
        )
    ))
    assert {r.status_code for r in answers} <= {200, 404}
    assert all(r.json()["error"] == "tag_not_found" for r in answers if r.status_code == 404)


@asynccontextmanager
async def _holding(gw: Gateway, lock: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own holding ``lock`` until the block ends; it also terminates the others."""
    conn = await asyncpg.connect(gw.settings.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        async with conn.transaction():
            await conn.execute(lock)
            yield conn
    finally:
        await conn.close()


async def _terminate_when_blocked(conn: asyncpg.Connection, times: int) -> None:
    """``times`` times: wait until a gateway statement waits on the lock, then terminate every gateway backend.
    A terminated backend can stay in the activity view for a moment: the next round waits for another one."""
    terminated: set[int] = set()

    async def new_waiter() -> list[int]:
        return [r["pid"] for r in await _waiting(conn) if r["pid"] not in terminated]

    for _ in range(times):
        assert await eventually(new_waiter, timeout_s=10)
        terminated |= {r["pid"] for r in await _waiting(conn)}
        await conn.execute(TERMINATE)


async def _answer_after_terminations(
    gw: Gateway, lock: str, request: Awaitable[httpx.Response], times: int
) -> httpx.Response:
    async with _holding(gw, lock) as conn:
        task = asyncio.ensure_future(request)
        await _terminate_when_blocked(conn, times)
        if times == 1:  # the retry reached the lock again: it runs once the lock goes
            assert await eventually(lambda: _waiting(conn), timeout_s=10)
    return await task


async def test_reads_run_again_on_a_fresh_connection_then_answer_503(gw: Gateway) -> None:
    token = await gw.token("acme")
    await _tags(gw, token, 1)
    lock = "LOCK TABLE tag IN ACCESS EXCLUSIVE MODE"
    info = {"dataset": "d", "tags": True}
    retried = await _answer_after_terminations(gw, lock, gw.post("/api/dataset_info/", info, token), 1)
    assert retried.status_code == 200 and [t["title"] for t in retried.json()["tags"]] == ["t0"]
    lost = await _answer_after_terminations(gw, lock, gw.post("/api/dataset_info/", info, token), 2)
    assert lost.status_code == 503 and lost.json() == {"error": "unavailable", "detail": "database unavailable"}
    assert (await gw.post("/api/dataset_info/", info, token)).status_code == 200  # and it recovers


async def test_a_write_lost_before_its_commit_runs_again_once(gw: Gateway) -> None:
    token = await gw.token("acme")
    [tag_id] = await _tags(gw, token, 1)
    report = [{"content": "خیلی عالیه", "tag_id": tag_id, "positive": True}]
    lock = "LOCK TABLE tag IN ACCESS EXCLUSIVE MODE"
    answer = await _answer_after_terminations(gw, lock, gw.post("/api/report_text_tags/", report, token), 1)
    assert answer.status_code == 200 and answer.json()[0]["report"] == f"[[{tag_id},true]]"
    created = await _answer_after_terminations(
        gw, "LOCK TABLE dataset IN ACCESS EXCLUSIVE MODE",
        gw.post("/api/create_tag/", {"dataset": "d", "title": "once"}, token), 1,
    )
    assert created.status_code == 200
    url = gw.settings.database_url
    assert await sql(url, "SELECT count(*) FROM report") == [(1,)]
    assert await sql(url, "SELECT count(*) FROM outbox WHERE subject LIKE 'kashf.events.report.%'") == [(1,)]
    assert await sql(url, "SELECT count(*) FROM tag WHERE title = 'once'") == [(1,)]


async def test_token_lookup_and_dataset_view_load_run_again(gw: Gateway) -> None:
    token = await gw.token("acme")
    await gw.post("/api/create_dataset/", {"dataset": "words", "kind": "text"}, token)
    fresh = await gw.token("acme")  # not in the token cache yet
    listed = await _answer_after_terminations(
        gw, "LOCK TABLE api_token IN ACCESS EXCLUSIVE MODE", gw.post("/api/list_datasets/", {}, fresh), 1
    )
    assert listed.status_code == 200 and [d["dataset"] for d in listed.json()] == ["words"]
    tagged = await _answer_after_terminations(
        gw, "LOCK TABLE dataset IN ACCESS EXCLUSIVE MODE",
        gw.post("/api/tag_texts/", {"dataset": "words", "contents": ["سلام"]}, token), 1,
    )
    assert tagged.status_code == 200 and tagged.json()[0]["tags"][0]["id"] == 0  # no tags yet: unknown


async def test_connections_terminated_under_load_answer_200_or_503(gw: Gateway) -> None:
    token = await gw.token("acme")
    [tag_id] = await _tags(gw, token, 1)
    statuses: list[int] = []
    for round_ in range(5):
        calls = [
            gw.post("/api/dataset_info/", {"dataset": "d"}, token),
            gw.post("/api/list_datasets/", {}, token),
            gw.post("/api/report_text_tags/", [{"content": f"r{round_}", "tag_id": tag_id, "positive": True}], token),
            gw.post("/api/create_tag/", {"dataset": "d", "title": f"n{round_}"}, token),
        ] * 6
        requests = asyncio.gather(*calls)
        await sql(gw.settings.database_url, TERMINATE)
        statuses += [r.status_code for r in await requests]
    assert set(statuses) <= {200, 503}, statuses
    assert (await gw.post("/api/dataset_info/", {"dataset": "d"}, token)).status_code == 200


def _dbapi_error(statement: str | None, invalidated: bool) -> DBAPIError:
    return DBAPIError(statement, None, Exception("terminating connection"), connection_invalidated=invalidated)


def test_only_a_connection_lost_before_the_commit_is_retried() -> None:
    assert lost_before_commit(_dbapi_error("SELECT 1", invalidated=True))
    assert not lost_before_commit(_dbapi_error(None, invalidated=True))  # the COMMIT itself: outcome unknown
    assert not lost_before_commit(_dbapi_error("INSERT", invalidated=False))  # a statement that failed: a bug
    assert unavailable(_dbapi_error(None, invalidated=True))
    assert not unavailable(_dbapi_error("INSERT", invalidated=False))


def test_a_server_starting_up_or_shut_down_is_unavailable_not_a_bug() -> None:
    # After a crash Postgres refuses connections while it replays its WAL ("the database system is starting
    # up", SQLSTATE 57P03); SQLAlchemy wraps that as a plain DBAPIError, which used to answer 500.
    for orig in (asyncpg.CannotConnectNowError("the database system is starting up"),
                 asyncpg.AdminShutdownError("terminating connection"), asyncpg.TooManyConnectionsError("full")):
        assert unavailable(DBAPIError(None, None, orig, connection_invalidated=False))
    assert not unavailable(DBAPIError("INSERT", None, asyncpg.UniqueViolationError("dup")))
