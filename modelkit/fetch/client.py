"""Safe URL fetcher for images and videos: SSRF-proof, size-capped, media type sniffed.

Every host is resolved once and every address checked; the connection goes to a checked address
(the original name travels in the Host header and TLS SNI), and every redirect is checked again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import urlsplit

import httpx

from modelkit.fetch.addresses import (
    HOST_RE,
    AllowList,
    IPAddress,
    is_forbidden_address,
    parse_allow_hosts,
    parse_numeric_ipv4,
)
from modelkit.fetch.sniff import sniff_media_type
from shared.errors import BadRequest, FetchFailed, TooLarge, UnsupportedMedia

MAX_URL_CHARS = 8192
SNIFF_BYTES = 512
DEFAULT_PORTS = frozenset({80, 443})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class FetchPolicy:
    """Limits and allowlist of one Fetcher."""

    allow_hosts: AllowList = field(default_factory=AllowList)
    max_bytes: int = 20 * 2**20
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_timeout: float = 30.0
    max_redirects: int = 3
    user_agent: str = "Kashf/0.1"
    # Ports a public URL may name; allowlisted hosts may use any (FETCH_ALLOW_PORTS).
    allowed_ports: frozenset[int] = DEFAULT_PORTS


@dataclass(frozen=True)
class Fetched:
    """A fetched body; `path` is set (and `content` empty) when streamed to a file."""

    url: str
    final_url: str
    content: bytes
    media_type: str
    size: int
    path: Path | None = None


def _accepted(media_type: str, accept: Collection[str]) -> bool:
    return any(media_type == a or (a.endswith("/") and media_type.startswith(a)) for a in accept)


def _limit_text(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class _Target:
    url: httpx.URL
    host: str  # normalised name as the user gave it (or the literal address)
    addresses: tuple[IPAddress, ...]
    literal: bool  # host is an IP address, so no SNI name


def _parse_url(url: str) -> tuple[httpx.URL, str]:
    if len(url) > MAX_URL_CHARS:
        raise BadRequest(f"url longer than {MAX_URL_CHARS} characters", code="invalid_url")
    scheme = url.split(":", 1)[0].strip().lower() if ":" in url else ""
    if scheme not in ("http", "https"):
        shown = f"scheme {scheme!r}" if re.fullmatch(r"[a-z][a-z0-9+.-]{0,30}", scheme) else "url"
        raise BadRequest(f"{shown} not allowed: use http or https", code="invalid_url")
    try:
        parsed = httpx.URL(url.strip())
    except httpx.InvalidURL as exc:
        _classify_unparseable(url)
        raise BadRequest("malformed url", code="invalid_url") from exc
    if parsed.scheme not in ("http", "https"):
        raise BadRequest("url scheme not allowed: use http or https", code="invalid_url")
    if parsed.userinfo:
        raise BadRequest("credentials in urls are not allowed", code="invalid_url")
    host = parsed.raw_host.decode("ascii").lower()
    if not host:
        raise BadRequest("url has no host", code="invalid_url")
    return parsed, host


def _classify_unparseable(url: str) -> None:
    """httpx refuses some numeric hosts (octal dotted quads) that the OS would still connect to."""
    try:
        host = urlsplit(url.strip()).hostname or ""
        ip = parse_numeric_ipv4(host)
    except ValueError:
        return
    if ip is not None and is_forbidden_address(ip):
        raise BadRequest(f"host {host!r} is a forbidden address", code="forbidden_address")


class Fetcher:
    """Fetches public images and videos; holds one httpx.AsyncClient (use as async context manager)."""

    def __init__(self, policy: FetchPolicy, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.policy = policy
        timeout = httpx.Timeout(
            connect=policy.connect_timeout, read=policy.read_timeout,
            write=policy.read_timeout, pool=policy.connect_timeout,
        )
        self._client = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            # No env proxies or .netrc: a proxy would resolve names itself and bypass the checks.
            trust_env=False,
            verify=ssl_context if ssl_context is not None else True,
            # Pooled connections are keyed by address; without reuse, a TLS session verified for
            # one name never carries a request for another name on the same address.
            limits=httpx.Limits(max_keepalive_connections=0),
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            headers={"User-Agent": policy.user_agent, "Accept-Encoding": "identity"},
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(
        self, url: str, *, accept: Collection[str] = ("image/", "video/"), max_bytes: int | None = None
    ) -> Fetched:
        """Fetch `url` into memory; raises shared.errors on any refusal or failure."""
        buffer = bytearray()

        async def sink(chunk: bytes) -> None:
            buffer.extend(chunk)

        final_url, media_type, size = await self._run(url, accept, max_bytes, sink)
        return Fetched(url, final_url, bytes(buffer), media_type, size)

    async def stream_to_file(
        self, url: str, dest: Path, *, accept: Collection[str] = ("image/", "video/"),
        max_bytes: int | None = None,
    ) -> Fetched:
        """Stream `url` into `dest` (created only once the media type is accepted; removed on failure)."""
        handle: IO[bytes] | None = None

        async def sink(chunk: bytes) -> None:
            nonlocal handle
            if handle is None:
                handle = await asyncio.to_thread(dest.open, "wb")
            await asyncio.to_thread(handle.write, chunk)

        try:
            final_url, media_type, size = await self._run(url, accept, max_bytes, sink)
        except BaseException:
            if handle is not None:
                await asyncio.to_thread(handle.close)
                await asyncio.to_thread(dest.unlink, missing_ok=True)
            raise
        if handle is not None:
            await asyncio.to_thread(handle.close)
        return Fetched(url, final_url, b"", media_type, size, path=dest)

    async def post(self, url: str, content: bytes, headers: Mapping[str, str]) -> int:
        """POST ``content`` to ``url`` under the same address and port checks (webhooks); the status, redirects
        not followed. Raises BadRequest when the policy refuses the URL (nothing connected), FetchFailed else."""
        total = self.policy.total_timeout
        try:
            async with asyncio.timeout(total):
                response = await self._open(await self._resolve(url), "POST", content, headers)
                await response.aclose()
        except TimeoutError:
            raise FetchFailed(f"timed out after {total:g} s") from None
        return response.status_code

    async def _run(
        self, url: str, accept: Collection[str], max_bytes: int | None,
        sink: Callable[[bytes], Awaitable[None]],
    ) -> tuple[str, str, int]:
        total = self.policy.total_timeout
        try:
            async with asyncio.timeout(total):
                return await self._follow(url, accept, max_bytes or self.policy.max_bytes, sink)
        except TimeoutError:
            raise FetchFailed(f"timed out after {total:g} s") from None

    async def _follow(
        self, url: str, accept: Collection[str], max_bytes: int,
        sink: Callable[[bytes], Awaitable[None]],
    ) -> tuple[str, str, int]:
        current = url
        for hop in range(self.policy.max_redirects + 1):
            target = await self._resolve(current)
            response = await self._open(target)
            try:
                location = response.headers.get("location")
                if response.status_code in _REDIRECTS and location:
                    if hop == self.policy.max_redirects:
                        raise FetchFailed(f"too many redirects (more than {self.policy.max_redirects})")
                    try:
                        current = str(target.url.join(location).copy_with(fragment=None))
                    except httpx.InvalidURL:
                        raise BadRequest("redirect to a malformed url", code="invalid_url") from None
                    continue
                if response.status_code >= 300 or response.status_code < 200:
                    raise FetchFailed(f"http status {response.status_code}")
                media_type, size = await self._read_body(response, target, accept, max_bytes, sink)
                return current, media_type, size
            finally:
                await response.aclose()
        raise AssertionError("unreachable: the loop returns or raises")

    async def _resolve(self, url: str) -> _Target:
        parsed, host = _parse_url(url)
        name = host.rstrip(".")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        literal: IPAddress | None
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            try:
                literal = parse_numeric_ipv4(name)
            except ValueError:
                raise BadRequest(f"host {host!r} is not a valid address", code="invalid_url") from None
        if literal is not None:
            addresses: tuple[IPAddress, ...] = (literal,)
        else:
            if not HOST_RE.match(host):
                raise BadRequest(f"host {host!r} is not a valid host name", code="invalid_url")
            addresses = await self._lookup(name, port)
        allow = self.policy.allow_hosts
        # Every address must pass: one private answer among public ones still refuses the host.
        if any(is_forbidden_address(ip) and not allow.permits(name, ip) for ip in addresses):
            what = "is" if literal is not None else "resolves to"
            raise BadRequest(f"host {host!r} {what} a forbidden address", code="forbidden_address")
        # Other ports of a public host reach admin consoles and mail servers, not media.
        if port not in self.policy.allowed_ports and not all(allow.permits(name, ip) for ip in addresses):
            allowed = ", ".join(str(p) for p in sorted(self.policy.allowed_ports))
            raise BadRequest(f"port {port} not allowed: use {allowed}", code="forbidden_port")
        return _Target(parsed, name, addresses, literal is not None)

    @staticmethod
    async def _lookup(host: str, port: int) -> tuple[IPAddress, ...]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError):
            raise FetchFailed(f"could not resolve host {host!r}") from None
        seen: dict[IPAddress, None] = {}
        for family, *_rest, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6):
                seen[ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])] = None
        if not seen:
            raise FetchFailed(f"could not resolve host {host!r}")
        return tuple(seen)

    async def _open(self, target: _Target, method: str = "GET", content: bytes | None = None,
                    extra_headers: Mapping[str, str] | None = None) -> httpx.Response:
        headers = {**(extra_headers or {}), "Host": target.url.netloc.decode("ascii")}
        extensions = {} if target.literal else {"sni_hostname": target.url.raw_host.decode("ascii")}
        failure = f"could not connect to {target.host!r}"
        for ip in target.addresses:
            request = self._client.build_request(
                method, target.url.copy_with(host=str(ip)), headers=headers, content=content, extensions=extensions
            )
            try:
                return await self._client.send(request, stream=True)
            except httpx.ConnectTimeout:
                failure = f"connect to {target.host!r} timed out after {self.policy.connect_timeout:g} s"
            except httpx.ConnectError as exc:
                if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate" in str(exc).lower():
                    raise FetchFailed(f"tls certificate of {target.host!r} not valid") from None
            except httpx.HTTPError as exc:
                raise self._transport_failure(exc, target) from None
        raise FetchFailed(failure)

    async def _read_body(
        self, response: httpx.Response, target: _Target, accept: Collection[str], max_bytes: int,
        sink: Callable[[bytes], Awaitable[None]],
    ) -> tuple[str, int]:
        too_large = TooLarge(f"download over {_limit_text(max_bytes)} limit")
        declared = response.headers.get("content-length", "")
        if declared.strip().isdigit() and int(declared) > max_bytes:
            raise too_large
        head = bytearray()
        media_type: str | None = None
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise too_large
                if media_type is None:
                    head.extend(chunk)
                    if len(head) < SNIFF_BYTES:
                        continue
                    media_type = self._check_type(bytes(head), accept)
                    chunk, head = bytes(head), bytearray()
                await sink(chunk)
        except httpx.HTTPError as exc:
            raise self._transport_failure(exc, target) from None
        if media_type is None:
            if not head:
                raise FetchFailed("empty response body")
            media_type = self._check_type(bytes(head), accept)
            await sink(bytes(head))
        return media_type, size

    @staticmethod
    def _check_type(head: bytes, accept: Collection[str]) -> str:
        media_type = sniff_media_type(head)
        if media_type is None:
            raise UnsupportedMedia("unrecognised media format")
        if not _accepted(media_type, accept):
            raise UnsupportedMedia(f"unsupported media type {media_type}")
        return media_type

    def _transport_failure(self, exc: httpx.HTTPError, target: _Target) -> FetchFailed:
        if isinstance(exc, httpx.ReadTimeout):
            return FetchFailed(f"read from {target.host!r} timed out after {self.policy.read_timeout:g} s")
        if isinstance(exc, httpx.TimeoutException):
            return FetchFailed(f"request to {target.host!r} timed out")
        return FetchFailed(f"connection to {target.host!r} failed ({type(exc).__name__})")


def policy_from_settings(allow_hosts: str, allow_ports: str, **limits: Any) -> FetchPolicy:
    """A FetchPolicy from FETCH_ALLOW_HOSTS and FETCH_ALLOW_PORTS (validated by the settings) and limits."""
    ports = frozenset(int(p) for p in allow_ports.split(",") if p.strip())
    return FetchPolicy(allow_hosts=parse_allow_hosts(allow_hosts), allowed_ports=ports, **limits)
