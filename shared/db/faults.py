"""Database errors that mean "the server cannot serve now" (retry later, answer 503), not a bug; the gateway
and the trainer both decide with these."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

# SQLSTATEs of a server that cannot serve now: class 08 (connection exception), too many connections, and an
# administrator's, a crash's or a starting server's refusal ("the database system is starting up" while it
# replays its WAL after a crash: asyncpg's CannotConnectNowError, which SQLAlchemy wraps as a plain DBAPIError).
_UNAVAILABLE_SQLSTATES = frozenset({"53300", "57P01", "57P02", "57P03"})


def server_unavailable(exc: BaseException) -> bool:
    """The error (or the driver's error it wraps) carries a SQLSTATE saying the server cannot serve now."""
    for err in (exc, getattr(exc, "orig", None), exc.__cause__):
        state = getattr(err, "sqlstate", None)
        if isinstance(state, str) and (state.startswith("08") or state in _UNAVAILABLE_SQLSTATES):
            return True
    return False


def connection_lost(exc: DBAPIError) -> bool:
    """A SQLAlchemy database error that says the server went away or refused, not that the statement was wrong.
    asyncpg's "terminating connection due to administrator command" is a plain DBAPIError: the invalidated
    connection (or the SQLSTATE) tells it from a bug."""
    return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError) or server_unavailable(exc)
