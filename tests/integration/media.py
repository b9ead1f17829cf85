"""Real photos for the end-to-end tests (skimage and scikit-learn ship them) and a loopback file server."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from skimage import data


def photos() -> dict[str, np.ndarray]:
    return {"cat": data.chelsea(), "coffee": data.coffee(), "rocket": data.rocket(), "astronaut": data.astronaut()}


def variant(photo: np.ndarray, k: int, size: int = 256) -> Image.Image:
    """A different view of the photo per k: crops at several offsets and scales, some mirrored."""
    img = Image.fromarray(photo).convert("RGB")
    w, h = img.size
    scale = 0.7 + 0.06 * (k % 5)
    cw, ch = int(w * scale), int(h * scale)
    x = int((w - cw) * ((k * 37) % 11) / 10)
    y = int((h - ch) * ((k * 53) % 7) / 6)
    out = img.crop((x, y, x + cw, y + ch)).resize((size, int(size * ch / cw)))
    return ImageOps.mirror(out) if k % 2 else out


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@contextmanager
def file_server(files: dict[str, tuple[bytes, str]]) -> Iterator[str]:
    """Serve ``files`` (path -> (body, content type)) on 127.0.0.1; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = files.get(self.path)
            if found is None:
                self.send_error(404)
                return
            body, content_type = found
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
