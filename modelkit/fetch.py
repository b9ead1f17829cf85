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
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from types import TracebackType
from typing import IO, Self
from urllib.parse import urlsplit

import httpx

from shared.errors import BadRequest, FetchFailed, TooLarge, UnsupportedMedia

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_CHARS = 8192
SNIFF_BYTES = 512
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HOST_RE = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$")

# Checked in addition to ipaddress' flags, whose tables differ between Python patch releases.
_FORBIDDEN_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    )
)
_FORBIDDEN_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20",
        "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


def _v4_forbidden(ip: ipaddress.IPv4Address) -> bool:
    return (
        any(ip in net for net in _FORBIDDEN_V4)
        or ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
        or ip.is_reserved or ip.is_unspecified or not ip.is_global
    )


def is_forbidden_address(ip: IPAddress) -> bool:
    """True for any address a public fetch must never reach (v4 and v6, embedded v4 included)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _v4_forbidden(ip)
    if ip.ipv4_mapped is not None:
        return _v4_forbidden(ip.ipv4_mapped)
    if ip in _NAT64:
        # The NAT64 gateway forwards to the embedded v4 address.
        return _v4_forbidden(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None and _v4_forbidden(ip.sixtofour):
        return True
    if ip.teredo is not None and any(_v4_forbidden(v4) for v4 in ip.teredo):
        return True
    return (
        any(ip in net for net in _FORBIDDEN_V6)
        or ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_site_local
        or ip.is_multicast or ip.is_reserved or ip.is_unspecified or not ip.is_global
    )


def parse_numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Read a host the way inet_aton does ("2130706433", "0177.0.0.1", "0x7f.1", "127.1").

    Returns None when the host is not numeric; raises ValueError for a numeric host out of range.
    """
    parts = host.split(".")
    if parts and parts[-1] == "":
        parts.pop()
    if not parts or len(parts) > 4:
        return None
    numbers: list[int] = []
    for part in parts:
        try:
            if part[:2].lower() == "0x":
                numbers.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                numbers.append(int(part[1:], 8))
            else:
                if not part.isdigit():
                    return None
                numbers.append(int(part))
        except ValueError:
            return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        raise ValueError(f"numeric host out of range: {host}")
    value = last
    for i, n in enumerate(head):
        value |= n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _normalise_host(host: str) -> str:
    """Lower-case, IDNA-encoded, without trailing dot: how both URLs and the allowlist name hosts."""
    raw = httpx.URL(f"http://{host}/").raw_host.decode("ascii")
    return raw.rstrip(".").lower()


@dataclass(frozen=True)
class AllowList:
    """Private hosts and networks an operator has opened to fetching (FETCH_ALLOW_HOSTS)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    def permits(self, host: str, ip: IPAddress) -> bool:
        if host in self.hosts:
            return True
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c in net for c in candidates for net in self.networks if c.version == net.version)


def parse_allow_hosts(value: str) -> AllowList:
    """Parse "localhost,10.1.2.3,192.168.0.0/16"; raises ValueError on an entry that is neither."""
    hosts: set[str] = set()
    networks: list[IPNetwork] = []
    for item in (p.strip() for p in value.split(",")):
        if not item:
            continue
        bare = item[1:-1] if item.startswith("[") and item.endswith("]") else item
        try:
            networks.append(ipaddress.ip_network(bare, strict=False))
            continue
        except ValueError:
            pass
        invalid = ValueError(f"FETCH_ALLOW_HOSTS: not a host, address or network: {item!r}")
        if any(c in item for c in "/:@?#[]\\% \t"):
            raise invalid
        try:
            name = _normalise_host(item)
        except (httpx.InvalidURL, UnicodeError) as exc:
            raise invalid from exc
        if not _HOST_RE.match(name):
            raise invalid
        hosts.add(name)
    return AllowList(frozenset(hosts), tuple(networks))


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


@dataclass(frozen=True)
class Fetched:
    """A fetched body; `path` is set (and `content` empty) when streamed to a file."""

    url: str
    final_url: str
    content: bytes
    media_type: str
    size: int
    path: Path | None = None


def sniff_media_type(head: bytes) -> str | None:
    """Media type from the first bytes (about 512 are enough); None when unrecognised."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head.startswith(b"RIFF") and len(head) >= 12:
        return {b"WEBP": "image/webp", b"AVI ": "video/x-msvideo", b"WAVE": "audio/wav"}.get(head[8:12])
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    # "BM" alone is too weak: also require a known DIB header size.
    if head.startswith(b"BM") and int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64, 108, 124):
        return "image/bmp"
    if head[4:8] == b"ftyp":
        return _sniff_ftyp(head)
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return "video/quicktime"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm" if b"webm" in head[:64] else "video/x-matroska"
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:
        return "video/mp2t"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "video/mpeg"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "application/zip"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith(b"\x1f\x8b"):
        return "application/gzip"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "text/html"
    if text.startswith(b"<?xml") or text.startswith(b"<svg"):
        # SVG is script-capable XML, never treated as an image here.
        return "text/xml"
    return None


def _sniff_ftyp(head: bytes) -> str:
    size = int.from_bytes(head[:4], "big")
    box = head[8 : max(16, min(size, len(head)))]
    brands = {box[i : i + 4] for i in range(0, len(box) - 3, 4)}
    major = head[8:12]
    if major in (b"avif", b"avis") or (major in (b"mif1", b"msf1") and b"avif" in brands):
        return "image/avif"
    if major in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"):
        return "image/heic"
    if major in (b"mif1", b"msf1"):
        return "image/heif"
    if major == b"qt  ":
        return "video/quicktime"
    if major in (b"M4A ", b"M4B ", b"F4A "):
        return "audio/mp4"
    if major.startswith(b"3g"):
        return "video/3gpp"
    return "video/mp4"


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
            if not _HOST_RE.match(host):
                raise BadRequest(f"host {host!r} is not a valid host name", code="invalid_url")
            addresses = await self._lookup(name, parsed.port or (443 if parsed.scheme == "https" else 80))
        allow = self.policy.allow_hosts
        # Every address must pass: one private answer among public ones still refuses the host.
        if any(is_forbidden_address(ip) and not allow.permits(name, ip) for ip in addresses):
            what = "is" if literal is not None else "resolves to"
            raise BadRequest(f"host {host!r} {what} a forbidden address", code="forbidden_address")
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

    async def _open(self, target: _Target) -> httpx.Response:
        headers = {"Host": target.url.netloc.decode("ascii")}
        extensions = {} if target.literal else {"sni_hostname": target.url.raw_host.decode("ascii")}
        failure = f"could not connect to {target.host!r}"
        for ip in target.addresses:
            request = self._client.build_request(
                "GET", target.url.copy_with(host=str(ip)), headers=headers, extensions=extensions
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
