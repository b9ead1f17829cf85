"""structlog set-up shared by every process; the correlation id lives in contextvars."""

from __future__ import annotations

import logging
import sys
import uuid

import structlog

CORRELATION_HEADER = "Kashf-Correlation-Id"


def configure_logging(service: str, *, level: str = "INFO", json: bool = False) -> None:
    """Route stdlib and structlog output through one renderer, tagged with the service name."""
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
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
