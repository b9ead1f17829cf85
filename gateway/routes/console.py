"""The web console (no token: the page asks for one and calls the public /api with it): ``/ui/`` serves
index.html, ``/ui/assets/<version>/<file>`` the static files, ``version`` being a hash of them all."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from gateway.http_errors import error_response

STATIC = Path(__file__).resolve().parents[1] / "console" / "static"
ASSETS_MARK = "{{assets}}"

# The page loads its own scripts, styles and images only, talks to its own origin only, and cannot be framed.
# media-src: the "Try it" page plays the dropped video from a blob: URL to draw the returned frames.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
IMMUTABLE = "public, max-age=31536000, immutable"
NO_CACHE = "no-cache"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@dataclass(frozen=True)
class Console:
    """The files, read once when the router is built; requests look names up here, never on the disk."""

    version: str
    index: Asset
    assets: dict[str, Asset]

    @classmethod
    def load(cls, root: Path = STATIC) -> Console:
        files = {
            p.relative_to(root / "assets").as_posix(): p.read_bytes()
            for p in sorted((root / "assets").rglob("*"))
            if p.is_file() and p.suffix in TYPES
        }
        digest = hashlib.sha256()
        for name, body in files.items():
            digest.update(name.encode() + b"\0" + hashlib.sha256(body).digest())
        version = digest.hexdigest()[:16]
        html = (root / "index.html").read_text(encoding="utf-8").replace(ASSETS_MARK, f"/ui/assets/{version}")
        return cls(version, _asset(html.encode(), ".html"), {n: _asset(b, Path(n).suffix) for n, b in files.items()})


def _asset(body: bytes, suffix: str) -> Asset:
    return Asset(body, TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def _serve(request: Request, asset: Asset, cache: str) -> Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": cache, "ETag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else asset.body
    response = Response(body, media_type=asset.media_type, headers=headers)
    if request.method == "HEAD":
        response.headers["Content-Length"] = str(len(asset.body))
    return response


def router(console: Console | None = None) -> APIRouter:
    files = console or Console.load()

    async def index(request: Request) -> Response:
        return _serve(request, files.index, NO_CACHE)

    async def to_index() -> Response:
        return RedirectResponse("/ui/", status_code=308)

    async def asset(request: Request, version: str, name: str) -> Response:
        found = files.assets.get(name)
        if found is None:
            response = error_response(404, "not_found", "no such console file")
            response.headers.update(SECURITY_HEADERS)
            return response
        # An old version's name (a page loaded before an upgrade) gets today's file, not to be kept.
        return _serve(request, found, IMMUTABLE if version == files.version else NO_CACHE)

    r = APIRouter(include_in_schema=False)
    r.add_api_route("/ui", to_index, methods=["GET", "HEAD"])
    r.add_api_route("/ui/", index, methods=["GET", "HEAD"])
    r.add_api_route("/ui/assets/{version}/{name:path}", asset, methods=["GET", "HEAD"])
    return r
