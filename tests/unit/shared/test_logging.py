"""Every log record, from structlog or from a library's stdlib logger, is rendered the same way."""

from __future__ import annotations

import json
import subprocess
import sys

_PROGRAM = """
import logging, structlog
from shared.logging import bind_correlation_id, configure_logging
import uvicorn.config  # uvicorn's own loggers exist before configuration, as in a real process
configure_logging("text_service", level="INFO", json={json})
bind_correlation_id("cid-123")
structlog.get_logger("kashf.test").info("model_loaded", dim=384)
logging.getLogger("nats.aio.client").error("reconnecting to %s", "nats://a:4222")
logging.getLogger("uvicorn.error").warning("Invalid HTTP request received.")
logging.getLogger("sqlalchemy.pool").debug("below the level: not shown")
try:
    raise ValueError("boom")
except ValueError:
    logging.getLogger("alembic.runtime").exception("migration failed")
"""


def _run(json_logs: bool) -> list[str]:
    done = subprocess.run([sys.executable, "-c", _PROGRAM.format(json=json_logs)],
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stderr.splitlines()


def test_json_logs_carry_time_service_and_correlation_id_for_library_records() -> None:
    lines = _run(True)
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) == 4, lines  # the DEBUG record is filtered, nothing is printed as plain text
    assert all(line.startswith("{") for line in lines if line.strip() and not line.startswith(" ")), lines
    by_event = {r["event"]: r for r in records}
    ours = by_event["model_loaded"]
    assert ours["dim"] == 384 and ours["level"] == "info"
    nats = by_event["reconnecting to nats://a:4222"]
    assert nats["logger"] == "nats.aio.client" and nats["level"] == "error"
    assert by_event["Invalid HTTP request received."]["logger"] == "uvicorn.error"
    failed = by_event["migration failed"]
    assert "ValueError: boom" in failed["exception"]
    for record in records:
        assert record["service"] == "text_service"
        assert record["correlation_id"] == "cid-123"
        assert record["timestamp"].endswith("Z")


def test_console_logs_render_library_records_with_the_same_fields() -> None:
    lines = [line for line in _run(False) if "reconnecting" in line]
    assert len(lines) == 1
    assert "service=text_service" in lines[0] and "correlation_id=cid-123" in lines[0]
    assert lines[0][:4].isdigit()  # starts with the ISO time
