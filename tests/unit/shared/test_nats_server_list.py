"""NATS_URL may name several servers, comma-separated (a cluster's seeds): every process connects to one that
answers, service start-up waits for any of them, and per-service credentials go on each."""

from __future__ import annotations

import pytest

from devtools import servers
from modelkit.runtime import _safe_url, nats_answers
from shared import natsauth
from shared.bus import Bus


def test_a_list_is_split_and_each_server_gets_the_user() -> None:
    url = " nats://127.0.0.1:4222, nats://old:pw@10.0.0.2:4223 ,"
    assert natsauth.server_urls(url) == ["nats://127.0.0.1:4222", "nats://old:pw@10.0.0.2:4223"]
    assert natsauth.with_user(url, "trainer", "s/cret") == (
        "nats://trainer:s%2Fcret@127.0.0.1:4222,nats://trainer:s%2Fcret@10.0.0.2:4223")
    assert _safe_url("nats://trainer:pw@127.0.0.1:4222,nats://trainer:pw@10.0.0.2") == (
        "nats://127.0.0.1:4222,nats://10.0.0.2:4222")  # no password in the logs
    with pytest.raises(ValueError, match="NATS_URL names no server"):
        natsauth.server_urls(" , ")


async def test_the_first_named_server_down_the_next_one_is_used(nats_url: str) -> None:
    dead = f"nats://127.0.0.1:{servers.free_port()}"  # nothing listens there
    url = f"{dead},{nats_url}"
    assert not await nats_answers(dead, timeout_s=0.5)
    assert await nats_answers(url, timeout_s=0.5)
    bus = await Bus.connect(url, "test-server-list")
    try:
        assert bus.nc.connected_url is not None
        assert bus.nc.connected_url.port == int(nats_url.rsplit(":", 1)[1])
        await bus.nc.publish("test.server.list", b"x")
        await bus.nc.flush()
    finally:
        await bus.close(1)
