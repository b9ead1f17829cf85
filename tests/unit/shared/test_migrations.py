"""The migrations and the ORM models describe one schema, and the newest migration goes down and up again."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect

from devtools import servers
from shared.db.engine import make_engine
from shared.db.migrate import alembic_config, upgrade
from shared.db.models import Base


def _diff(url: str) -> list[Any]:
    async def run() -> list[Any]:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata))
        finally:
            await engine.dispose()
    return asyncio.run(run())


def _tables(url: str) -> set[str]:
    async def run() -> set[str]:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                def names(sync: Connection) -> set[str]:
                    return set(inspect(sync).get_table_names())
                return await conn.run_sync(names)
        finally:
            await engine.dispose()
    return asyncio.run(run())


def test_migrations_at_head_match_the_models_and_the_newest_goes_down_and_up(pg_server: str) -> None:
    name = f"kashf_m_{uuid.uuid4().hex[:10]}"
    url = asyncio.run(servers.create_database(pg_server, name))
    try:
        upgrade(url)
        assert _diff(url) == []
        assert {"webhook", "webhook_delivery", "suggestion"} <= _tables(url)
        command.downgrade(alembic_config(url), "0004")
        assert not {"webhook", "webhook_delivery", "suggestion"} & _tables(url)
        assert _diff(url), "the comparison must see a schema one migration behind"
        upgrade(url)
        assert _diff(url) == []
    finally:
        asyncio.run(servers.drop_database(pg_server, name))
