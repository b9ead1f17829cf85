"""structlog set-up shared by every process; the correlation id lives in contextvars."""

from __future__ import annotations

import logging
import sys
import uuid

import structlog

CORRELATION_HEADER = "Kashf-Correlation-Id"


# Libraries that log through the standard library; their records go through the same renderer.
_LIBRARY_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "nats", "sqlalchemy", "alembic", "asyncio")


def configure_logging(service: str, *, level: str = "INFO", json: bool = False) -> None:
    """Route structlog and every stdlib logger (uvicorn, nats-py, SQLAlchemy, Alembic) through one
    renderer, each record with time, level, service and the bound correlation id."""
    chain: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*chain, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
    structlog.contextvars.bind_contextvars(service=service)


def new_correlation_id() -> str:
    return uuid.uuid4().hex[:16]


def bind_correlation_id(value: str | None) -> str:
    """Bind the id for the current task (a new one when None) and return it."""
    cid = value or new_correlation_id()
    structlog.contextvars.bind_contextvars(correlation_id=cid)
    return cid


def current_correlation_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get("correlation_id")
    return str(value) if value is not None else None
