"""modelkit.fetch against real loopback servers: SSRF refusals, limits, sniffing and the success paths.

One recording server listens on 127.0.0.1, 127.0.0.2, 127.0.0.3 and ::1 (same port). Tests allowlist
only 127.0.0.3 (standing in for a public host), so any connection seen on another address is a leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import shutil
import socket
import ssl
import subprocess
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import av
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image
from skimage import data as skdata

from modelkit.fetch import (
    AllowList,
    Fetched,
    Fetcher,
    FetchPolicy,
    is_forbidden_address,
    parse_allow_hosts,
    parse_numeric_ipv4,
    sniff_media_type,
)
from shared.errors import BadRequest, FetchFailed, KashfError, TooLarge, UnsupportedMedia

PUBLIC = "127.0.0.3"  # the allowlisted stand-in for a public host
LISTEN = ("127.0.0.1", "127.0.0.2", PUBLIC, "::1")


# ---------------------------------------------------------------- real media, made here


def _photo(size: int = 96) -> Image.Image:
    return Image.fromarray(skdata.astronaut()[100:356, 150:406]).resize((size, size))


def _image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    _photo().save(buf, format=fmt)
    return buf.getvalue()


def _video_bytes(container: str, codec: str, frames: int = 6) -> bytes:
    buf = io.BytesIO()
    base = np.asarray(_photo(64))
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.roll(base, 4 * i, axis=1).copy(), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("clip.mp4", MEDIA["mp4"])
    return buf.getvalue()


HTML = b"<!DOCTYPE html>\n<html><head><title>Not found</title></head><body>nope</body></html>\n"
MEDIA: dict[str, bytes] = {}


@pytest.fixture(scope="module", autouse=True)
def media() -> dict[str, bytes]:
    if not MEDIA:
        MEDIA.update(jpeg=_image_bytes("JPEG"), mp4=_video_bytes("mp4", "libx264"))
        MEDIA["zip"] = _zip_bytes()
    return MEDIA


# ---------------------------------------------------------------- the recording loopback server


@dataclass
class Seen:
    local: str
    target: str
    host: str


@dataclass
class LoopbackServer:
    port: int = 0
    accepted: list[str] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    servers: list[asyncio.Server] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, hosts: tuple[str, ...], tls: ssl.SSLContext | None = None) -> None:
        for _ in range(20):
            try:
                first = await asyncio.start_server(self._handle, hosts[0], 0, ssl=tls)
                self.servers = [first]
                self.port = first.sockets[0].getsockname()[1]
                for host in hosts[1:]:
                    self.servers.append(await asyncio.start_server(self._handle, host, self.port, ssl=tls))
                return
            except OSError:
                await self.stop()
        raise RuntimeError("no port free on every loopback address")

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for server in self.servers:
            await server.wait_closed()
        self.servers = []

    def reset(self) -> None:
        self.accepted.clear()
        self.requests.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.accepted.append(writer.get_extra_info("sockname")[0])
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            target = head[0].split(" ")[1]
            headers = dict(line.split(":", 1) for line in head[1:] if ":" in line)
            host = next((v.strip() for k, v in headers.items() if k.lower() == "host"), "")
            self.requests.append(Seen(writer.get_extra_info("sockname")[0], target, host))
            await self._respond(target, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError, ssl.SSLError):
            pass
        finally:
            self.tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _respond(self, target: str, writer: asyncio.StreamWriter) -> None:
        path = urlsplit(target).path
        query = parse_qs(urlsplit(target).query)

        async def send(status: str, body: bytes, ctype: str, extra: str = "") -> None:
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n{extra}\r\n".encode() + body
            )
            await writer.drain()

        async def head_only(extra: str) -> None:
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n{extra}\r\n".encode())
            await writer.drain()

        if path == "/photo.jpg":
            await send("200 OK", MEDIA["jpeg"], "image/jpeg")
        elif path == "/photo":  # a JPEG labelled as HTML: the type comes from the bytes
            await send("200 OK", MEDIA["jpeg"], "text/html")
        elif path == "/page.jpg":  # HTML labelled as JPEG
            await send("200 OK", HTML, "image/jpeg")
        elif path == "/clip.mp4":
            await send("200 OK", MEDIA["mp4"], "video/mp4")
        elif path == "/archive.mp4":
            await send("200 OK", MEDIA["zip"], "video/mp4")
        elif path == "/redirect":
            await send("302 Found", b"", "text/plain", f"Location: {query['to'][0]}\r\n")
        elif path.startswith("/chain/"):
            n = int(path.rsplit("/", 1)[1])
            location = "/photo.jpg" if n <= 1 else f"/chain/{n - 1}"
            await send("301 Moved Permanently", b"", "text/plain", f"Location: {location}\r\n")
        elif path == "/drip":  # one byte a second, forever
            await head_only("Content-Length: 100000\r\n")
            for byte in MEDIA["jpeg"] * 10:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1.0)
        elif path == "/stall":
            await head_only("Content-Length: 100000\r\n")
            await asyncio.sleep(60)
        elif path == "/endless":  # a JPEG start, then bytes until the client hangs up
            await head_only("Connection: close\r\n")
            writer.write(MEDIA["jpeg"][:1024])
            for _ in range(16 * 1024):  # bounded at 1 GiB in case a client never stops
                writer.write(b"\x00" * 65536)
                await writer.drain()
        elif path == "/huge":
            await head_only(f"Content-Length: {10 * 2**30}\r\n")
            writer.write(MEDIA["jpeg"][:1024])
            await writer.drain()
            await asyncio.sleep(60)
        else:
            await send("404 Not Found", HTML, "text/html")


@pytest_asyncio.fixture(scope="module")
async def loopback() -> AsyncIterator[LoopbackServer]:
    srv = LoopbackServer()
    await srv.start(LISTEN)
    yield srv
    await srv.stop()


@pytest.fixture
def server(loopback: LoopbackServer) -> LoopbackServer:
    loopback.reset()
    return loopback


def _policy(allow: str = PUBLIC, **overrides: Any) -> FetchPolicy:
    return FetchPolicy(allow_hosts=parse_allow_hosts(allow), **overrides)


# ---------------------------------------------------------------- refusals: nothing forbidden is reached

FORBIDDEN = "forbidden_address"
INVALID = "invalid_url"
BLOCKED = [
    # (url template, error code, addresses the server may see a connection on)
    ("http://127.0.0.1:{port}/photo.jpg", FORBIDDEN, []),
    ("http://127.0.0.2:{port}/photo.jpg", FORBIDDEN, []),
    ("http://[::1]:{port}/photo.jpg", FORBIDDEN, []),
    ("http://0.0.0.0:{port}/photo.jpg", FORBIDDEN, []),
    ("http://[::]:{port}/photo.jpg", FORBIDDEN, []),
    ("http://2130706433:{port}/photo.jpg", FORBIDDEN, []),
    ("http://2130706434:{port}/photo.jpg", FORBIDDEN, []),
    ("http://0177.0.0.1:{port}/photo.jpg", FORBIDDEN, []),
    ("http://0x7f.0.0.1:{port}/photo.jpg", FORBIDDEN, []),
    ("http://0x7f000001:{port}/photo.jpg", FORBIDDEN, []),
    ("http://127.1:{port}/photo.jpg", FORBIDDEN, []),
    ("http://127.0.0.1.:{port}/photo.jpg", FORBIDDEN, []),
    ("http://[::ffff:127.0.0.1]:{port}/photo.jpg", FORBIDDEN, []),
    ("http://[::ffff:7f00:2]:{port}/photo.jpg", FORBIDDEN, []),
    ("http://localhost:{port}/photo.jpg", FORBIDDEN, []),
    ("http://LocalHost.:{port}/photo.jpg", FORBIDDEN, []),
    ("http://169.254.169.254/latest/meta-data/", FORBIDDEN, []),
    ("http://10.0.0.1/", FORBIDDEN, []),
    ("http://192.168.1.1/", FORBIDDEN, []),
    ("http://100.64.0.1/", FORBIDDEN, []),
    ("http://[fd00::1]/", FORBIDDEN, []),
    ("http://[fe80::1%25lo]/", FORBIDDEN, []),
    ("http://[2002:7f00:1::1]/", FORBIDDEN, []),
    ("http://[64:ff9b::a9fe:a9fe]/", FORBIDDEN, []),
    ("http://{public}:{port}/redirect?to=http://127.0.0.1:{port}/photo.jpg", FORBIDDEN, [PUBLIC]),
    ("http://{public}:{port}/redirect?to=http://localhost:{port}/photo.jpg", FORBIDDEN, [PUBLIC]),
    ("http://{public}:{port}/redirect?to=http://[::1]:{port}/photo.jpg", FORBIDDEN, [PUBLIC]),
    ("http://{public}:{port}/redirect?to=file:///etc/passwd", INVALID, [PUBLIC]),
    ("file:///etc/passwd", INVALID, []),
    ("gopher://{public}:{port}/_GET%20/photo.jpg", INVALID, []),
    ("ftp://{public}:{port}/photo.jpg", INVALID, []),
    ("//{public}:{port}/photo.jpg", INVALID, []),
    ("http://user:secret@{public}:{port}/photo.jpg", INVALID, []),
    ("http:///photo.jpg", INVALID, []),
    ("http://bad host:{port}/photo.jpg", INVALID, []),
    ("http://999.0.0.1:{port}/photo.jpg", INVALID, []),
]


@pytest.mark.parametrize(("template", "code", "reached"), BLOCKED, ids=[b[0] for b in BLOCKED])
async def test_forbidden_and_malformed_urls_are_refused_without_connecting(
    server: LoopbackServer, template: str, code: str, reached: list[str]
) -> None:
    url = template.format(port=server.port, public=PUBLIC)
    started = time.monotonic()
    async with Fetcher(_policy()) as fetcher:
        with pytest.raises(BadRequest) as info:
            await fetcher.fetch(url)
    assert info.value.error_code == code
    assert info.value.status == 400
    assert server.accepted == reached, "a connection reached a forbidden address"
    assert time.monotonic() - started < 2.0


async def test_forbidden_detail_names_the_host_not_the_resolved_address(server: LoopbackServer) -> None:
    async with Fetcher(_policy()) as fetcher:
        with pytest.raises(BadRequest) as info:
            await fetcher.fetch(f"http://localhost:{server.port}/photo.jpg")
    assert "localhost" in info.value.detail
    assert "127.0.0.1" not in info.value.detail and "::1" not in info.value.detail


# ---------------------------------------------------------------- failures on an allowed host


FAILURES = [
    # (path, policy overrides, accept, error class, words in the detail)
    ("/missing", {}, ("image/", "video/"), FetchFailed, "http status 404"),
    ("/page.jpg", {}, ("image/", "video/"), UnsupportedMedia, "text/html"),
    ("/archive.mp4", {}, ("image/", "video/"), UnsupportedMedia, "application/zip"),
    ("/photo.jpg", {}, ("video/",), UnsupportedMedia, "image/jpeg"),
    ("/clip.mp4", {}, ("image/",), UnsupportedMedia, "video/mp4"),
    ("/drip", {"total_timeout": 1.5, "read_timeout": 5.0}, ("image/",), FetchFailed, "timed out after 1.5 s"),
    ("/stall", {"read_timeout": 0.4}, ("image/",), FetchFailed, "timed out after 0.4 s"),
    ("/endless", {"max_bytes": 256 * 1024}, ("image/",), TooLarge, "256 KiB"),
    ("/huge", {}, ("image/",), TooLarge, "20 MiB"),
    ("/chain/4", {"max_redirects": 3}, ("image/",), FetchFailed, "too many redirects"),
]


@pytest.mark.parametrize(
    ("path", "overrides", "accept", "error", "words"), FAILURES, ids=[f[0] for f in FAILURES]
)
async def test_failures_raise_the_matching_error(
    server: LoopbackServer, path: str, overrides: dict[str, float], accept: tuple[str, ...],
    error: type[KashfError], words: str,
) -> None:
    started = time.monotonic()
    async with Fetcher(_policy(**overrides)) as fetcher:
        with pytest.raises(error) as info:
            await fetcher.fetch(f"http://{PUBLIC}:{server.port}{path}", accept=accept)
    assert words in info.value.detail
    assert {seen.local for seen in server.requests} == {PUBLIC}
    # Limits act as soon as they are crossed, not after the body ends.
    assert time.monotonic() - started < 3.0


async def test_closed_port_is_a_fetch_failure() -> None:
    with socket.socket() as sock:
        sock.bind((PUBLIC, 0))
        port = sock.getsockname()[1]
    async with Fetcher(_policy()) as fetcher:
        with pytest.raises(FetchFailed) as info:
            await fetcher.fetch(f"http://{PUBLIC}:{port}/photo.jpg")
    assert info.value.status == 502
    assert "could not connect" in info.value.detail


# ---------------------------------------------------------------- success paths


async def test_allowlisted_jpeg_is_fetched_and_sniffed(server: LoopbackServer) -> None:
    url = f"http://{PUBLIC}:{server.port}/photo"  # served as text/html: the bytes decide
    async with Fetcher(_policy()) as fetcher:
        got = await fetcher.fetch(url, accept=("image/",))
    assert got == Fetched(url, url, MEDIA["jpeg"], "image/jpeg", len(MEDIA["jpeg"]))
    assert Image.open(io.BytesIO(got.content)).size == (96, 96)


async def test_allowlisted_host_name_connects_to_its_address_with_the_original_host_header(
    server: LoopbackServer,
) -> None:
    url = f"http://localhost:{server.port}/photo.jpg"
    async with Fetcher(_policy("localhost")) as fetcher:
        got = await fetcher.fetch(url)
    assert got.content == MEDIA["jpeg"]
    assert [(s.target, s.host) for s in server.requests] == [("/photo.jpg", f"localhost:{server.port}")]
    assert server.requests[0].local in ("127.0.0.1", "::1")


async def test_allowlisted_network_admits_numeric_host_forms(server: LoopbackServer) -> None:
    async with Fetcher(_policy("127.0.0.0/8")) as fetcher:
        got = await fetcher.fetch(f"http://2130706434:{server.port}/photo.jpg")
    assert got.media_type == "image/jpeg"
    assert server.accepted == ["127.0.0.2"]  # read as the OS reads it


async def test_redirect_chain_within_the_allowlist_is_followed(server: LoopbackServer) -> None:
    url = f"http://{PUBLIC}:{server.port}/chain/3"
    async with Fetcher(_policy()) as fetcher:
        got = await fetcher.fetch(url)
    assert got.final_url == f"http://{PUBLIC}:{server.port}/photo.jpg"
    assert got.content == MEDIA["jpeg"]
    assert [s.target for s in server.requests] == ["/chain/3", "/chain/2", "/chain/1", "/photo.jpg"]


async def test_video_streams_to_file(server: LoopbackServer, tmp_path: Path) -> None:
    dest = tmp_path / "clip.mp4"
    async with Fetcher(_policy()) as fetcher:
        url = f"http://{PUBLIC}:{server.port}/clip.mp4"
        got = await fetcher.stream_to_file(url, dest, accept=("video/",))
    assert (got.media_type, got.path, got.size, got.content) == ("video/mp4", dest, len(MEDIA["mp4"]), b"")
    assert dest.read_bytes() == MEDIA["mp4"]
    with av.open(str(dest)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6


@pytest.mark.parametrize(("path", "error"), [("/archive.mp4", UnsupportedMedia), ("/endless", TooLarge)])
async def test_stream_to_file_leaves_no_file_on_refusal(
    server: LoopbackServer, tmp_path: Path, path: str, error: type[KashfError]
) -> None:
    dest = tmp_path / "clip.mp4"
    async with Fetcher(_policy(max_bytes=300_000)) as fetcher:
        with pytest.raises(error):
            await fetcher.stream_to_file(f"http://{PUBLIC}:{server.port}{path}", dest)
    assert not dest.exists()


# ---------------------------------------------------------------- https: verified against the name


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not installed")
    d = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=Kashf Test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign", cwd=d)
    _openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "leaf.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return d


@pytest_asyncio.fixture(scope="module")
async def tls_server(tls_files: Path) -> AsyncIterator[LoopbackServer]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls_files / "leaf.pem", tls_files / "leaf.key")
    srv = LoopbackServer()
    await srv.start(("127.0.0.1", "::1"), tls=ctx)
    yield srv
    await srv.stop()


async def test_https_connects_to_the_address_but_verifies_the_name(
    tls_server: LoopbackServer, tls_files: Path
) -> None:
    trust = ssl.create_default_context(cafile=str(tls_files / "ca.pem"))
    async with Fetcher(_policy("localhost,127.0.0.1"), ssl_context=trust) as fetcher:
        got = await fetcher.fetch(f"https://localhost:{tls_server.port}/photo.jpg")
        assert got.content == MEDIA["jpeg"]
        assert tls_server.requests[-1].host == f"localhost:{tls_server.port}"
        # The certificate names only "localhost": the bare address must fail verification.
        with pytest.raises(FetchFailed) as info:
            await fetcher.fetch(f"https://127.0.0.1:{tls_server.port}/photo.jpg")
    assert "certificate" in info.value.detail


# ---------------------------------------------------------------- pure functions, table-driven


def _sniff_cases() -> list[tuple[str, bytes, str | None]]:
    return [
        ("jpeg", _image_bytes("JPEG"), "image/jpeg"),
        ("png", _image_bytes("PNG"), "image/png"),
        ("gif", _image_bytes("GIF"), "image/gif"),
        ("webp", _image_bytes("WEBP"), "image/webp"),
        ("bmp", _image_bytes("BMP"), "image/bmp"),
        ("tiff", _image_bytes("TIFF"), "image/tiff"),
        ("avif", _image_bytes("AVIF"), "image/avif"),
        ("mp4", _video_bytes("mp4", "libx264"), "video/mp4"),
        ("mov", _video_bytes("mov", "libx264"), "video/quicktime"),
        ("webm", _video_bytes("webm", "libvpx"), "video/webm"),
        ("mkv", _video_bytes("matroska", "mpeg4"), "video/x-matroska"),
        ("avi", _video_bytes("avi", "mpeg4"), "video/x-msvideo"),
        ("mpegts", _video_bytes("mpegts", "mpeg2video"), "video/mp2t"),
        ("zip", _zip_bytes(), "application/zip"),
        ("html", HTML, "text/html"),
        ("svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "text/xml"),
        ("text", "یک متن فارسی، نه تصویر".encode(), None),
        ("empty", b"", None),
        ("truncated-bmp", b"BM\x00\x00", None),
    ]


def test_sniff_media_type_reads_real_files() -> None:
    for name, payload, expected in _sniff_cases():
        assert sniff_media_type(payload[:512]) == expected, name


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("8.8.8.8", False), ("1.1.1.1", False), ("2606:4700:4700::1111", False),
        ("::ffff:8.8.8.8", False), ("64:ff9b::808:808", False), ("2002:808:808::1", False),
        ("127.0.0.1", True), ("127.255.0.9", True), ("10.1.2.3", True), ("172.16.0.1", True),
        ("192.168.0.1", True), ("169.254.169.254", True), ("100.64.0.1", True), ("0.0.0.0", True),
        ("224.0.0.1", True), ("239.255.255.250", True), ("255.255.255.255", True), ("240.0.0.1", True),
        ("198.18.0.1", True), ("192.0.2.1", True), ("::1", True), ("::", True), ("fe80::1", True),
        ("fec0::1", True), ("fd12:3456::1", True), ("ff02::1", True), ("::ffff:127.0.0.1", True),
        ("::ffff:169.254.169.254", True), ("::127.0.0.1", True), ("64:ff9b::7f00:1", True),
        ("64:ff9b:1::1", True), ("2002:7f00:1::1", True), ("2002:a00:1::1", True),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", True), ("2001:db8::1", True),
    ],
)
def test_is_forbidden_address(address: str, forbidden: bool) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address)) is forbidden


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"), ("127.0.1", "127.0.0.1"), ("0x7f000001", "127.0.0.1"),
        ("10.0.0.1.", "10.0.0.1"), ("017700000001", "127.0.0.1"), ("example.com", None),
        ("1e100.net", None), ("localhost", None), ("08.0.0.1", None),
    ],
)
def test_parse_numeric_ipv4_reads_hosts_like_the_os(host: str, expected: str | None) -> None:
    got = parse_numeric_ipv4(host)
    assert (None if got is None else str(got)) == expected
    if expected is not None:
        assert socket.inet_aton(host.rstrip(".")) == ipaddress.IPv4Address(expected).packed


@pytest.mark.parametrize("host", ["256.0.0.1", "1.2.3.256", "4294967296", "1.16777216"])
def test_parse_numeric_ipv4_refuses_out_of_range(host: str) -> None:
    with pytest.raises(ValueError):
        parse_numeric_ipv4(host)


def test_parse_allow_hosts_reads_names_addresses_and_networks() -> None:
    allow = parse_allow_hosts(" localhost, 10.1.2.3,192.168.0.0/16,[::1], Images.Example.ORG., ,fd00::/8")
    assert allow.hosts == frozenset({"localhost", "images.example.org"})
    assert [str(n) for n in allow.networks] == ["10.1.2.3/32", "192.168.0.0/16", "::1/128", "fd00::/8"]
    ip = ipaddress.ip_address
    assert allow.permits("localhost", ip("127.0.0.1"))
    assert allow.permits("anything", ip("192.168.44.5"))
    assert allow.permits("anything", ip("::ffff:10.1.2.3"))
    assert not allow.permits("anything", ip("10.1.2.4"))
    assert not allow.permits("localhost.evil.test", ip("127.0.0.1"))
    assert parse_allow_hosts("") == AllowList()


@pytest.mark.parametrize("entry", ["http://x", "a b", "10.0.0.0/33", "host:80", "*.example.com", "a/b"])
def test_parse_allow_hosts_refuses_garbage(entry: str) -> None:
    with pytest.raises(ValueError, match="FETCH_ALLOW_HOSTS"):
        parse_allow_hosts(f"localhost,{entry}")
