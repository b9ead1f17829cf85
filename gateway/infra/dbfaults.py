"""Database failures a request can answer for: a lost connection is a 503, not a bug, and when it was lost
while a statement ran (not the COMMIT) nothing was committed, so the work may run again on a fresh one."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from shared.db.faults import connection_lost


def unavailable(exc: BaseException) -> bool:
    """The database went away or could not be reached in time."""
    if isinstance(exc, DBAPIError):
        return connection_lost(exc)
    return isinstance(exc, PoolTimeout | OSError | TimeoutError)


def lost_before_commit(exc: BaseException) -> bool:
    """The connection died while a statement other than the COMMIT ran: the transaction never committed."""
    # SQLAlchemy names the statement that failed; a failed COMMIT has none (its outcome is unknown).
    return isinstance(exc, DBAPIError) and exc.connection_invalidated and exc.statement is not None
