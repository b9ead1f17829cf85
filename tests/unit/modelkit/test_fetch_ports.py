"""Image and video URLs reach only the web ports of a public host, unless an operator opens more."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelkit.fetch import DEFAULT_PORTS, Fetcher, policy_from_settings
from shared.errors import BadRequest
from shared.settings import VisionServiceSettings

PUBLIC_IP = "93.184.216.34"  # a global address: passes the address checks; never connected to here


@pytest.mark.parametrize("url", [f"http://{PUBLIC_IP}:8080/a.jpg", f"https://{PUBLIC_IP}:22/a.jpg",
                                 f"http://{PUBLIC_IP}:6379/", f"https://{PUBLIC_IP}:8443/a.jpg"])
async def test_other_ports_of_a_public_host_are_refused(url: str) -> None:
    async with Fetcher(policy_from_settings("", "80,443")) as fetcher:
        with pytest.raises(BadRequest) as caught:
            await fetcher.fetch(url)
    assert caught.value.error_code == "forbidden_port"
    assert "use 80, 443" in caught.value.detail


async def test_web_ports_pass_the_port_check() -> None:
    async with Fetcher(policy_from_settings("", "80,443")) as fetcher:
        for url in (f"http://{PUBLIC_IP}/a.jpg", f"http://{PUBLIC_IP}:80/a.jpg", f"https://{PUBLIC_IP}:443/a.jpg"):
            target = await fetcher._resolve(url)
            assert str(target.addresses[0]) == PUBLIC_IP


async def test_an_operator_can_open_a_port() -> None:
    async with Fetcher(policy_from_settings("", "443,8080")) as fetcher:
        assert (await fetcher._resolve(f"http://{PUBLIC_IP}:8080/a.jpg")).url.port == 8080
        with pytest.raises(BadRequest):
            await fetcher._resolve(f"http://{PUBLIC_IP}/a.jpg")  # 80 no longer listed


async def test_allowlisted_hosts_may_use_any_port() -> None:
    async with Fetcher(policy_from_settings("127.0.0.1", "80,443")) as fetcher:
        target = await fetcher._resolve("http://127.0.0.1:8081/a.jpg")
    assert target.url.port == 8081


def test_the_setting_defaults_to_web_ports_and_refuses_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    assert VisionServiceSettings().fetch_allow_ports == "80,443"
    assert frozenset({80, 443}) == DEFAULT_PORTS
    monkeypatch.setenv("FETCH_ALLOW_PORTS", " 443 , 8443")
    assert VisionServiceSettings().fetch_allow_ports == "443,8443"
    for bad in ("http", "0", "70000", "", "80;443"):
        monkeypatch.setenv("FETCH_ALLOW_PORTS", bad)
        with pytest.raises(ValidationError, match="FETCH_ALLOW_PORTS"):
            VisionServiceSettings()
