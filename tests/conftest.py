"""Real servers for every test session: a fresh Postgres database and a private nats-server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from devtools import servers
from shared.db.migrate import upgrade

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url, handle = servers.postgres_server(tmp_path_factory.mktemp("pg"))
    yield url
    del handle


@pytest.fixture(scope="session")
def database_url(pg_server: str) -> Iterator[str]:
    """A database of its own for this session, migrated to head, dropped at the end."""
    name = f"kashf_t_{uuid.uuid4().hex[:10]}"
    url = asyncio.run(servers.create_database(pg_server, name))
    upgrade(url)
    yield url
    asyncio.run(servers.drop_database(pg_server, name))


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private JetStream nats-server, so concurrent test sessions never share subjects."""
    if os.environ.get("KASHF_TEST_NATS_URL"):
        yield os.environ["KASHF_TEST_NATS_URL"]
        return
    proc, url = servers.start_nats(tmp_path_factory.mktemp("nats"))
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
async def clean_db(database_url: str) -> AsyncIterator[str]:
    """The session database emptied of rows before the test."""
    import asyncpg

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(
            "TRUNCATE account, api_token, dataset, tag, data_item, embedding, report, outbox, head_version"
            " RESTART IDENTITY CASCADE"
        )
    finally:
        await conn.close()
    yield database_url
