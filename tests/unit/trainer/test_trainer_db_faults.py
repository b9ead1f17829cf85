"""A database that cannot serve now is a transient failure for the trainer (the event is redelivered later),
never a poison message: found by tests/integration/test_resilience_postgres.py (Postgres restarted after a crash)."""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import DBAPIError

from trainer.consumers import is_transient


def test_a_server_starting_up_or_shut_down_is_transient() -> None:
    for orig in (asyncpg.CannotConnectNowError("the database system is starting up"),
                 asyncpg.AdminShutdownError("terminating connection"), asyncpg.TooManyConnectionsError("full")):
        assert is_transient(DBAPIError(None, None, orig, connection_invalidated=False))
        assert is_transient(orig)
    assert is_transient(ConnectionRefusedError(111, "Connection refused"))
    assert not is_transient(DBAPIError("INSERT", None, asyncpg.UniqueViolationError("dup")))
    assert not is_transient(ValueError("a bug"))
