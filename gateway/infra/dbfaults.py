"""Database failures a request can answer for: a lost connection is a 503, not a bug, and when it was lost
while a statement ran (not the COMMIT) nothing was committed, so the work may run again on a fresh one."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# SQLSTATEs of a server that cannot serve now: class 08 (connection exception), too many connections, and an
# administrator's, a crash's or a starting server's refusal ("the database system is starting up" while it
# replays its WAL after a crash: asyncpg's CannotConnectNowError, which SQLAlchemy wraps as a plain DBAPIError).
_UNAVAILABLE_SQLSTATES = frozenset({"53300", "57P01", "57P02", "57P03"})


def server_unavailable_sqlstate(exc: BaseException) -> bool:
    """The error (or the driver's error it wraps) carries a SQLSTATE saying the server cannot serve now."""
    for err in (exc, getattr(exc, "orig", None), exc.__cause__):
        state = getattr(err, "sqlstate", None)
        if isinstance(state, str) and (state.startswith("08") or state in _UNAVAILABLE_SQLSTATES):
            return True
    return False


def unavailable(exc: BaseException) -> bool:
    """The database went away or could not be reached in time."""
    if isinstance(exc, DBAPIError):
        # asyncpg's "terminating connection due to administrator command" is a plain DBAPIError: only the
        # invalidated connection tells it from a bug.
        return (exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
                or server_unavailable_sqlstate(exc))
    return isinstance(exc, PoolTimeout | OSError | TimeoutError)


def lost_before_commit(exc: BaseException) -> bool:
    """The connection died while a statement other than the COMMIT ran: the transaction never committed."""
    # SQLAlchemy names the statement that failed; a failed COMMIT has none (its outcome is unknown).
    return isinstance(exc, DBAPIError) and exc.connection_invalidated and exc.statement is not None
