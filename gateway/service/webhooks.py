"""Webhooks: create (URL checked, secret made and shown once), list, delete. The trainer delivers them.

A URL is refused here when the fetch rules surely refuse it without a DNS lookup (scheme, credentials, a literal
private address, localhost, a port of a host that cannot be allowlisted); the trainer checks the resolved
addresses again at every delivery (``modelkit.fetch``), so a name that later points inside is refused there."""

from __future__ import annotations

import functools
import ipaddress
import secrets
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from gateway.schemas import (
    CreateWebhookBody,
    DeleteWebhookOut,
    WebhookCreatedOut,
    WebhookDeliveryOut,
    WebhookOut,
)
from gateway.service.datasets import load_dataset
from gateway.uow import UnitOfWork
from shared.errors import BadRequest, NotFound

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class UrlRules:
    """FETCH_ALLOW_HOSTS (names and networks a URL may reach although private, on any port) and FETCH_ALLOW_PORTS."""

    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]
    ports: frozenset[int]

    def permits(self, host: str, ip: IPAddress | None) -> bool:
        if host in self.hosts:
            return True
        if ip is None:
            return False
        candidates = [ip] if not (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped) else [ip, ip.ipv4_mapped]
        return any(c in net for c in candidates for net in self.networks if c.version == net.version)


@functools.cache
def url_rules(allow_hosts: str, allow_ports: str) -> UrlRules:
    """The rules from the settings' strings (the trainer's ``modelkit.fetch.parse_allow_hosts`` validates them)."""
    hosts: set[str] = set()
    networks: list[IPNetwork] = []
    for item in (p.strip() for p in allow_hosts.split(",")):
        bare = item[1:-1] if item.startswith("[") and item.endswith("]") else item
        if not bare:
            continue
        try:
            networks.append(ipaddress.ip_network(bare, strict=False))
        except ValueError:
            hosts.add(bare.lower().rstrip("."))
    ports = frozenset(int(p) for p in allow_ports.split(",") if p.strip())
    return UrlRules(frozenset(hosts), tuple(networks), ports)


def _invalid(detail: str) -> BadRequest:
    return BadRequest(detail, code="invalid_url")


def _literal_address(host: str) -> IPAddress | None:
    """The address a host names literally, also in the forms inet_aton reads ("2130706433", "0x7f.1", "127.1")."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefx." for c in host) and host[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
        except OSError:
            return None
    return None


def _private(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _private(ip.ipv4_mapped)
    return not ip.is_global or ip.is_multicast


def check_url(url: str, rules: UrlRules) -> str:
    """``url`` (stripped) when the fetch rules may allow it; BadRequest naming the rule it breaks otherwise."""
    url = url.strip()
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in ("http", "https"):
        raise _invalid("url scheme not allowed: use http or https")
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii").lower().rstrip(".")
        port = parsed.port
        credentials = bool(parsed.userinfo)
    except httpx.InvalidURL:
        # httpx refuses some numeric hosts (octal dotted quads) that a resolver would still read.
        try:
            split = urlsplit(url)
            host, port, credentials = (split.hostname or "").rstrip("."), split.port, False
        except ValueError:
            raise _invalid("malformed url") from None
        if _literal_address(host) is None:
            raise _invalid("malformed url") from None
    if credentials:
        raise _invalid("credentials in urls are not allowed")
    if not host:
        raise _invalid("url has no host")
    ip = _literal_address(host)
    allowlisted = rules.permits(host, ip)
    if not allowlisted and ((ip is not None and _private(ip)) or host == "localhost" or host.endswith(".localhost")):
        raise BadRequest(f"host {host!r} is a private address (FETCH_ALLOW_HOSTS)", code="forbidden_address")
    # A name may still resolve into an allowlisted network; a literal address or an allowlist of names only may not.
    could_be_allowlisted = allowlisted or (ip is None and bool(rules.networks))
    if port is not None and port not in rules.ports and not could_be_allowlisted:
        allowed = ", ".join(str(p) for p in sorted(rules.ports))
        raise BadRequest(f"port {port} not allowed: use {allowed} (FETCH_ALLOW_PORTS)", code="forbidden_port")
    return url


def new_secret() -> str:
    return "whsec_" + secrets.token_hex(24)


def webhook_not_found(webhook_id: int) -> NotFound:
    return NotFound(f"webhook {webhook_id} not found", code="webhook_not_found")


async def create_webhook(
    uow: UnitOfWork, account_id: int, body: CreateWebhookBody, rules: UrlRules, max_webhooks: int
) -> WebhookCreatedOut:
    url = check_url(body.url, rules)
    events = list(dict.fromkeys(body.events))
    if not events:
        raise BadRequest("events is empty: name at least one event", code="empty_list")
    dataset_id = None if body.dataset is None else (await load_dataset(uow.repo, account_id, body.dataset)).id
    # Each webhook is one more POST per training event: the cap bounds what one account can make the trainer send.
    if await uow.repo.count_webhooks(account_id, lock=True) >= max_webhooks:
        raise BadRequest(f"this account has {max_webhooks} webhooks, the limit (KASHF_MAX_WEBHOOKS): delete one first",
                         code="too_many_webhooks")
    secret = new_secret()
    webhook = await uow.repo.insert_webhook(account_id, dataset_id, url, events, secret)
    return WebhookCreatedOut(id=webhook.id, url=webhook.url, events=webhook.events, secret=secret)


async def list_webhooks(uow: UnitOfWork, account_id: int) -> list[WebhookOut]:
    found = await uow.repo.webhooks(account_id)
    last = await uow.repo.last_deliveries([w.id for w, _ in found])
    out = []
    for webhook, dataset in found:
        delivery = last.get(webhook.id)
        out.append(WebhookOut(
            id=webhook.id, url=webhook.url, dataset=dataset, events=webhook.events, created=webhook.created_at,
            last_delivery=None if delivery is None else WebhookDeliveryOut(
                event=delivery.event, state=delivery.state, attempts=delivery.attempts,
                last_status=delivery.last_status, last_error=delivery.last_error, at=delivery.updated_at,
            ),
        ))
    return out


async def delete_webhook(uow: UnitOfWork, account_id: int, webhook_id: int) -> DeleteWebhookOut:
    if not await uow.repo.delete_webhook(account_id, webhook_id):
        raise webhook_not_found(webhook_id)
    return DeleteWebhookOut(id=webhook_id, deleted=True)
