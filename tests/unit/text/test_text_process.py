"""`python -m text_service` as a real process: health endpoints, readiness, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from devtools import servers
from shared.bus import Bus
from shared.schemas.inference import EmbedReply, EmbedTextsRequest
from shared.subjects import TEXT_EMBED
from tests.unit.text.texts import BUY

pytestmark = pytest.mark.integration  # starts the real service process

REPO = Path(__file__).resolve().parents[3]


class ServiceProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = int(env["KASHF_HEALTH_PORT"])
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "text_service"], cwd=REPO, env=env,
                                     stdout=self._out, stderr=subprocess.STDOUT)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def wait_for(self, path: str, status: int, timeout_s: float = 30.0) -> httpx.Response:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as http:
            while True:
                assert self.proc.poll() is None, f"service died:\n{self.output()}"
                try:
                    response = await http.get(self.url(path))
                    if response.status_code == status:
                        return response
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"{path} never answered {status}:\n{self.output()}"
                await asyncio.sleep(0.05)

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._out.close()


Spawn = Callable[..., "ServiceProcess"]


@pytest.fixture
def spawn(tiny_models_dir: Path, tmp_path: Path) -> Iterator[Spawn]:
    started: list[ServiceProcess] = []

    def factory(nats_url: str, **extra: str) -> ServiceProcess:
        env = {
            **os.environ, "NATS_URL": nats_url, "KASHF_MODELS_DIR": str(tiny_models_dir),
            "KASHF_TEXT_MODEL": "text/tiny", "KASHF_DEVICE": "cpu", "KASHF_HEALTH_HOST": "127.0.0.1",
            "KASHF_HEALTH_PORT": str(servers.free_port()), "KASHF_DRAIN_TIMEOUT_S": "10", **extra,
        }
        proc = ServiceProcess(env, tmp_path / f"service{len(started)}.log")
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.stop()


async def test_ready_serves_metrics_and_drains_in_flight_requests_on_sigterm(
        spawn: Spawn, nats_url: str) -> None:
    # A long batching wait keeps the request in flight when SIGTERM arrives.
    service = spawn(nats_url, KASHF_TEXT_MAX_WAIT_MS="1500")
    await service.wait_for("/healthz", 200)
    ready = await service.wait_for("/readyz", 200)
    assert ready.json()["checks"] == {"nats": True, "setup": True, "model": True}

    client = await Bus.connect(nats_url, "test-client")
    try:
        in_flight = asyncio.create_task(
            client.request(TEXT_EMBED, EmbedTextsRequest(texts=[BUY[0]]), EmbedReply, timeout_s=10)
        )
        await asyncio.sleep(0.5)
        service.proc.send_signal(signal.SIGTERM)
        reply = await in_flight
        vectors = reply.array()
        assert vectors.shape == (1, reply.dim)
        assert abs(float(np.linalg.norm(vectors[0])) - 1.0) < 1e-5
        code = await asyncio.to_thread(service.proc.wait, 15)
    finally:
        await client.close()
    assert code == 0, service.output()
    assert "service_stopped" in service.output()


async def test_metrics_count_requests_by_subject_and_outcome(
        spawn: Spawn, nats_url: str) -> None:
    service = spawn(nats_url)
    await service.wait_for("/readyz", 200)
    client = await Bus.connect(nats_url, "test-client")
    try:
        await client.request(TEXT_EMBED, EmbedTextsRequest(texts=BUY), EmbedReply)
    finally:
        await client.close()
    metrics = (await service.wait_for("/metrics", 200)).text
    assert 'kashf_requests_total{outcome="ok",subject="kashf.text.embed.v1"} 1.0' in metrics
    assert 'kashf_batch_size_sum{batcher="text"}' in metrics
    service.proc.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(service.proc.wait, 15) == 0


async def test_not_ready_without_nats_and_still_stops_cleanly(spawn: Spawn) -> None:
    dead = f"nats://127.0.0.1:{servers.free_port()}"
    service = spawn(dead)
    await service.wait_for("/healthz", 200)
    response = await service.wait_for("/readyz", 503)
    assert response.json()["checks"]["nats"] is False
    service.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(service.proc.wait, 15) == 0
    assert "nats_connect_failed" in service.output()
