"""Every query of the request path and of the trainer can use an index: none needs a sequential scan of a
table that grows with use. The queries are the real ones, captured while the API and the trainer's repository
run; each is then explained with sequential scans priced out (enable_seqscan = off), so a table still read whole
(a Seq Scan, or an index walked without a condition) means no index serves the query, whatever its size today."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import Engine

from shared.db.engine import make_engine, make_sessionmaker
from tests.unit.gateway.harness import Gateway, sql
from trainer import repository as trainer_sql

# Tables whose rows grow with datasets, reports and requests (account and api_token grow slowly but are
# read on every cache miss, so they are held to the same rule).
GROWING = {"account", "api_token", "dataset", "tag", "data_item", "report", "embedding", "outbox", "head_version"}


@contextmanager
def captured() -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    statements: list[tuple[str, tuple[Any, ...]]] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        head = statement.lstrip().split(None, 1)[0].upper()
        if not executemany and (head in {"SELECT", "UPDATE", "DELETE", "WITH"} or " SELECT " in statement):
            statements.append((statement, tuple(parameters or ())))

    event.listen(Engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(Engine, "before_cursor_execute", before)


def _full_scans(plan: dict[str, Any], partial: set[str]) -> Iterator[str]:
    """Tables the plan reads whole: a Seq Scan, or a full index (not a partial one) walked without a condition."""
    node, table = plan["Node Type"], plan.get("Relation Name", "")
    walked = node in ("Index Scan", "Index Only Scan") and "Index Cond" not in plan
    if node == "Seq Scan" or (walked and plan.get("Index Name") not in partial):
        yield table
    for child in plan.get("Plans", []):
        yield from _full_scans(child, partial)


async def _exercise_api(gw: Gateway) -> None:
    token = await gw.token("plans")
    await gw.post("/api/create_dataset/", {"dataset": "d", "title": "t", "kind": "text"}, token)
    a = (await gw.post("/api/create_tag/", {"dataset": "d", "title": "a"}, token)).json()["tag_id"]
    b = (await gw.post("/api/create_tag/", {"dataset": "d", "title": "b"}, token)).json()["tag_id"]
    await gw.post("/api/report_text_tags/", [{"content": f"text {i}", "tag_id": (a, b)[i % 2], "positive": True}
                                             for i in range(6)], token)
    await gw.post("/api/list_datasets/", {}, token)
    await gw.post("/api/dataset_info/", {"dataset": "d", "tags": True}, token)
    await gw.post("/api/update_tag/", {"dataset": "d", "tag_id": a, "title": "a2"}, token)
    await gw.post("/api/train_dataset/", {"dataset": "d"}, token)
    # A live version: dataset_info also reads its confusion counts.
    await sql(gw.settings.database_url,
              "INSERT INTO head_version (dataset_id, version, model_id, object_name, report_count) "
              "SELECT id, 1, 'm', 'o', 6 FROM dataset WHERE name = 'd'")
    await sql(gw.settings.database_url, "UPDATE dataset SET head_version = 1 WHERE name = 'd'")
    await gw.post("/api/dataset_info/", {"dataset": "d", "tags": False}, token)
    await gw.post("/api/delete_tag/", {"tag_id": b}, token)


async def _exercise_trainer(database_url: str) -> None:
    dataset_id = (await sql(database_url, "SELECT id FROM dataset WHERE name = 'd'"))[0]["id"]
    engine = make_engine(database_url, pool_size=1)
    try:
        async with make_sessionmaker(engine)() as session:
            dataset = await trainer_sql.get_dataset(session, dataset_id, lock=True)
            assert dataset is not None
            await trainer_sql.live_head(session, dataset)
            await trainer_sql.dataset_account(session, dataset_id)
            await trainer_sql.dataset_tags(session, dataset_id)
            await trainer_sql.dataset_reports(session, dataset_id)
            await trainer_sql.items_missing_embedding(session, dataset_id, "m@1")
            await trainer_sql.reported_embeddings(session, dataset_id, "m@1")
            await trainer_sql.pool_embeddings(session, dataset_id, "m@1")
            await trainer_sql.pool_missing_embedding(session, dataset_id, "m@1", 10)
            await trainer_sql.stalled_datasets(session, 120.0)
            await trainer_sql.set_state(session, dataset_id, "training")
            await session.rollback()
    finally:
        await engine.dispose()


async def test_no_query_needs_a_sequential_scan_of_a_growing_table(gw: Gateway) -> None:
    with captured() as statements:
        await _exercise_api(gw)
        await _exercise_trainer(gw.settings.database_url)
    assert len(statements) >= 15  # the scenario really ran the request path and the trainer's queries
    assert any("head_version.confusion" in statement for statement, _ in statements)
    conn = await asyncpg.connect(gw.settings.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    offenders: list[str] = []
    try:
        await conn.execute("SET enable_seqscan = off")
        rows = await conn.fetch("SELECT indexname FROM pg_indexes WHERE indexdef LIKE '% WHERE %'")
        partial = {r["indexname"] for r in rows}
        assert "ix_dataset_waiting" in partial
        seen: set[str] = set()
        for statement, parameters in statements:
            if statement in seen:
                continue
            seen.add(statement)
            async with conn.transaction():  # EXPLAIN of an UPDATE plans it without running it
                plan = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {statement}", *parameters))[0]["Plan"]
            scanned = {table for table in _full_scans(plan, partial) if table in GROWING}
            if scanned:
                offenders.append(f"{sorted(scanned)}: {' '.join(statement.split())[:300]}")
    finally:
        await conn.close()
    assert not offenders, "\n".join(offenders)


def _report_scans(plan: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(index name, index condition) of each scan of the report table in the plan ("" where none)."""
    if plan.get("Relation Name") == "report":
        yield plan.get("Index Name", ""), plan.get("Index Cond", "")
    for child in plan.get("Plans", []):
        yield from _report_scans(child)


async def test_a_page_of_a_datasets_reports_reads_only_that_page(gw: Gateway) -> None:
    # The trainer reads reports in keyset pages on (item, tag): with the dataset and the pair both in the index
    # condition each page reads one page of rows; an index on the pair alone walks other datasets' reports, and
    # one on the dataset alone reads and sorts all its reports for every page. These few rows would be read
    # whole and sorted, so the plan is asked without scans of the whole table, bitmaps or sorts.
    with captured() as statements:
        await _exercise_api(gw)
        await _exercise_trainer(gw.settings.database_url)
    pages = [(s, p) for s, p in statements if "(report.item_id, report.tag_id) >" in s]
    assert pages, "the trainer read no reports"
    conn = await asyncpg.connect(gw.settings.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute("SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_sort = off")
        statement, parameters = pages[0]
        plan = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {statement}", *parameters))[0]["Plan"]
    finally:
        await conn.close()
    [(index, condition)] = list(_report_scans(plan))
    assert index == "ix_report_dataset_item", plan
    assert "dataset_id" in condition and "ROW(item_id, tag_id)" in condition, condition
