"""Fixtures of the vision tests: tiny models built here, the real model when built, a loopback server."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.unit.vision.tiny_image_model import build_tiny_image_model

REPO = Path(__file__).resolve().parents[3]
REAL_IMAGE_MODEL = "image/efficientnet-lite0"


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``image/tiny-clip`` (two towers) and ``image/tiny`` (image tower only)."""
    root = tmp_path_factory.mktemp("models")
    build_tiny_image_model(root / "image" / "tiny-clip", text_tower=True)
    build_tiny_image_model(root / "image" / "tiny", text_tower=False)
    return root


@pytest.fixture(scope="session")
def real_models_dir() -> Path:
    """The built models (``make models``); tests marked ``models`` skip when they are absent."""
    root = Path(os.environ.get("KASHF_MODELS_DIR", REPO / "models"))
    if not (root / REAL_IMAGE_MODEL / "manifest.json").is_file():
        pytest.skip(f"no built image model under {root} (run `make models`)")
    return root


@dataclass
class StaticServer:
    """Serves ``files`` (path -> (content type, body)) on 127.0.0.1; anything else is 404."""

    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="session")
def static_server() -> Iterator[StaticServer]:
    server = StaticServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = server.files.get(self.path)
            if found is None:
                self.send_error(404)
                return
            ctype, body = found
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield server
    httpd.shutdown()
    httpd.server_close()
