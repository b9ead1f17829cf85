"""NATS_URL may name several servers, comma-separated (a cluster's seeds): every process connects to one that
answers, service start-up waits for any of them, and per-service credentials go on each."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import structlog

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


async def test_losing_the_server_moves_the_link_and_logs_one_warning(tmp_path: Path) -> None:
    first, first_url = servers.start_nats(tmp_path / "a")
    second, second_url = servers.start_nats(tmp_path / "b")
    try:
        with structlog.testing.capture_logs() as logs:
            bus = await Bus.connect(f"{first_url},{second_url}", "test-server-list-move")
            try:
                assert bus.nc.connected_url is not None
                held = first if bus.nc.connected_url.port == int(first_url.rsplit(":", 1)[1]) else second
                held.kill()
                held.wait(timeout=10)
                deadline = time.monotonic() + 15
                while not (bus.nc.is_connected and bus.nc.connected_url and held.poll() is not None
                           and bus.nc.connected_url.port != int((first_url if held is first else second_url)
                                                                .rsplit(":", 1)[1])):
                    assert time.monotonic() < deadline, "the link did not move to the other server"
                    await asyncio.sleep(0.1)
                await bus.nc.flush(timeout=5)
            finally:
                await bus.close(1)
        events = [(e["log_level"], e["event"]) for e in logs]
        assert ("warning", "nats_link_lost") in events, events
        assert not [e for e in logs if e["log_level"] == "error"], logs
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
