"""A local webhook receiver for tests: answers POSTs with the statuses it is given, keeps what came."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Receiver:
    """Answers each POST with the next status of ``statuses`` (the last one from then on); keeps what came."""

    statuses: list[int]
    location: str | None = None  # sent with every answer (a redirect's target)
    port: int = 0
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@contextmanager
def receiver(statuses: list[int], location: str | None = None) -> Iterator[Receiver]:
    box = Receiver(list(statuses), location)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                status = box.statuses[min(len(box.requests), len(box.statuses) - 1)]
                box.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                box.answered.append(status)
            self.send_response(status)
            if box.location is not None:
                self.send_header("Location", box.location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        server.shutdown()
        server.server_close()


def verify(secret: str, header: str, body: bytes) -> bool:
    """What a receiver does (the README's example): recompute the HMAC over "<t>.<body>"."""
    parts = dict(p.split("=", 1) for p in header.split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"]) and abs(time.time() - int(parts["t"])) < 300
