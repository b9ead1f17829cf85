"""The web console's static files: served without a token, with a strict CSP and cache headers that let a
browser keep versioned assets forever but always revalidate the page; /api still needs the token."""

from __future__ import annotations

import re
import tomllib

from gateway.routes.console import STATIC, Console
from tests.unit.gateway.harness import Gateway

CSP_RULES = [
    "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' blob: data:",
    "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'self'",
]


def _assets(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/ui/assets/[^"]+)"', html)


def _secure(headers: object) -> None:
    csp = headers["content-security-policy"]  # type: ignore[index]
    for rule in CSP_RULES:
        assert rule in csp, rule
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["x-content-type-options"] == "nosniff"  # type: ignore[index]
    assert headers["referrer-policy"] == "no-referrer"  # type: ignore[index]


async def test_page_and_assets_without_a_token(gw: Gateway) -> None:
    r = await gw.client.get("/ui/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    _secure(r.headers)
    assets = _assets(r.text)
    assert {a.rsplit("/", 1)[1] for a in assets} >= {"app.js", "console.css", "icon.svg"}
    version = Console.load().version
    for path in assets:
        assert path.startswith(f"/ui/assets/{version}/")
        a = await gw.client.get(path)
        assert a.status_code == 200, path
        assert a.headers["cache-control"] == "public, max-age=31536000, immutable"
        _secure(a.headers)
    js = await gw.client.get(f"/ui/assets/{version}/app.js")
    assert js.headers["content-type"] == "text/javascript; charset=utf-8"
    # Modules the entry point imports resolve under the same versioned folder.
    page = await gw.client.get(f"/ui/assets/{version}/pages/dataset.js")
    assert page.status_code == 200 and "list_versions" in page.text

    again = await gw.client.get("/ui/", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    bare = await gw.client.get("/ui")
    assert bare.status_code == 308 and bare.headers["location"] == "/ui/"


async def test_old_versions_unknown_files_and_traversal(gw: Gateway) -> None:
    old = await gw.client.get("/ui/assets/0123456789abcdef/app.js")
    assert old.status_code == 200 and old.headers["cache-control"] == "no-cache"
    for path in ("/ui/assets/x/nope.js", "/ui/assets/x/../../routes/console.py", "/ui/assets/x/%2e%2e/index.html",
                 "/ui/assets/x/../../../app.py"):
        r = await gw.client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"] == "not_found"
    post = await gw.client.post("/ui/", json={})
    assert post.status_code == 405


async def test_api_still_needs_the_token(gw: Gateway) -> None:
    r = await gw.client.post("/api/list_datasets/", json={})
    assert r.status_code == 401
    token = await gw.token("console")
    r = await gw.post("/api/list_datasets/", {}, token)
    assert r.status_code == 200 and r.json() == []
    # No CORS grant: another site's page cannot send the Authorization header (the preflight is refused),
    # and a cookie is never enough: CSRF has nothing to ride on.
    pre = await gw.client.options("/api/list_datasets/", headers={
        "Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert "access-control-allow-origin" not in pre.headers
    r = await gw.client.post("/api/list_datasets/", json={}, headers={"Cookie": f"token={token}"})
    assert r.status_code == 401


def test_no_script_writes_html_from_strings() -> None:
    """User text reaches the page through text nodes only: no innerHTML, outerHTML, insertAdjacentHTML,
    document.write or eval in the console's scripts; and no inline script or style in the page."""
    for path in sorted((STATIC / "assets").rglob("*.js")):
        text = path.read_text(encoding="utf-8")
        for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert banned not in text, f"{path.name}: {banned}"
        assert "localStorage" not in text, f"{path.name}: the token is kept in sessionStorage only"
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    assert "<script>" not in html and "style=" not in html and "<style" not in html


def test_package_data_holds_every_console_file() -> None:
    """pyproject's package-data globs (setuptools expands them with glob) name every static file, so a wheel
    and the Docker image ship the console."""
    gateway = STATIC.parents[1]
    pyproject = tomllib.loads((gateway.parent / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["gateway"]
    shipped = {p for pattern in patterns for p in gateway.glob(pattern) if p.is_file()}
    files = {p for p in STATIC.rglob("*") if p.is_file()}
    assert files and files <= shipped, sorted(str(p.relative_to(STATIC)) for p in files - shipped)
