"""Which hosts and addresses a public fetch may reach: forbidden ranges, inet_aton hosts, the operator's allowlist."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HOST_RE = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$")

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
        if not HOST_RE.match(name):
            raise invalid
        hosts.add(name)
    return AllowList(frozenset(hosts), tuple(networks))
