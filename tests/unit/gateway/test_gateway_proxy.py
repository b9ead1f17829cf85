"""The client's address behind a reverse proxy, on the real uvicorn server: X-Forwarded-For counts only when the
connection comes from KASHF_TRUSTED_PROXIES (none by default), for the per-address limit before token lookups and
for the address in logs. Every connection here comes from 127.0.0.1: trusting it plays the proxy."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import structlog
from pydantic import ValidationError

from shared.settings import GatewaySettings
from tests.unit.gateway.harness import eventually

# Three lookups of tokens not found before per address; the first goes to the logged request's valid token.
LIMIT = {"rate_per_ip_per_minute": 1, "rate_per_ip_burst": 3}


async def _guess(client: httpx.AsyncClient, forwarded: str | None = None) -> int:
    """A random token's status (401 looked up, 429 refused by its address's bucket first)."""
    headers = {"Authorization": f"Token {secrets.token_urlsafe(32)}"}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    return (await client.post("/api/list_datasets/", json={}, headers=headers)).status_code


async def _logged_client(port: int, token: str, forwarded: str) -> Any:
    """The ``client`` of the log line of a request that goes away mid-body, claiming ``forwarded``."""
    head = (f"POST /api/list_datasets/ HTTP/1.1\r\nHost: kashf\r\nAuthorization: Token {token}\r\n"
            f"X-Forwarded-For: {forwarded}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head.encode() + b'{"a": "')
        await writer.drain()
        writer.close()

        async def gone() -> list[dict[str, Any]]:
            return [e for e in logs if e["event"] == "client_disconnected"]

        [line] = await eventually(gone)
    return line.get("client")


async def test_a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing(serve: Callable[..., Any]) -> None:
    async with serve(**LIMIT) as served:
        assert await _logged_client(served.port, served.token, "203.0.113.7") == "127.0.0.1"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as client:
            # Each guess claims another address: all are charged to the connection's own, as the token above.
            statuses = [await _guess(client, f"203.0.113.{i}") for i in range(1, 5)]
            assert statuses == [401, 401, 429, 429]
            assert await _guess(client) == 429  # the same bucket as without the header


async def test_behind_a_trusted_proxy_the_forwarded_client_is_limited_and_logged(
    serve: Callable[..., Any],
) -> None:
    async with serve(trusted_proxies="127.0.0.1", **LIMIT) as served:
        assert await _logged_client(served.port, served.token, "203.0.113.7") == "203.0.113.7"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as client:
            assert [await _guess(client, "203.0.113.1") for _ in range(4)] == [401, 401, 401, 429]
            assert await _guess(client, "203.0.113.2") == 401  # another client behind the proxy: its own bucket
            # A client writing its own X-Forwarded-For: the proxy appends the address it saw, and that one,
            # the nearest not trusted, is the key; the client's choice is not.
            assert await _guess(client, "198.51.100.7, 203.0.113.1") == 429
            assert await _guess(client, "198.51.100.8, 10.9.8.7, 203.0.113.1") == 429
            assert await _guess(client) == 401  # the proxy's own requests: its address


def test_trusted_proxies_are_addresses_or_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    assert GatewaySettings().trusted_proxies == ""  # no one by default
    assert GatewaySettings(trusted_proxies=" 10.0.0.1/8, ::1 ,192.0.2.4").trusted_proxies == "10.0.0.0/8,::1,192.0.2.4"
    for wrong in ("*", "ingress-nginx", "10.0.0.0/33"):
        with pytest.raises(ValidationError, match="KASHF_TRUSTED_PROXIES"):
            GatewaySettings(trusted_proxies=wrong)
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.42.0.0/16")  # uvicorn's name, as the README once said
    assert GatewaySettings().trusted_proxies == "10.42.0.0/16"
    monkeypatch.setenv("KASHF_TRUSTED_PROXIES", "10.43.0.0/16")
    assert GatewaySettings().trusted_proxies == "10.43.0.0/16"
