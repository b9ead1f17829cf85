"""`python -m vision_service` as a real process: readiness, metrics, a drained request on SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from devtools import servers
from shared.bus import Bus
from shared.schemas.inference import HeadRef, ScoredTag, TagRef, TagReply
from shared.schemas.media import MediaInput, TagImagesRequest
from shared.subjects import VISION_TAG

pytestmark = pytest.mark.integration  # starts the real service process

REPO = Path(__file__).resolve().parents[3]


def spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "vision_service"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


async def wait_for(proc: subprocess.Popen[bytes], log: Path, url: str, status: int) -> httpx.Response:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=2.0) as http:
        while True:
            assert proc.poll() is None, f"service died:\n{tail(log)}"
            try:
                response = await http.get(url)
                if response.status_code == status:
                    return response
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{url} never answered {status}"
            await asyncio.sleep(0.05)


async def test_ready_then_drains_an_in_flight_request_on_sigterm(
        nats_url: str, tiny_models_dir: Path, tmp_path: Path) -> None:
    port = servers.free_port()
    env = {**os.environ, "NATS_URL": nats_url, "KASHF_MODELS_DIR": str(tiny_models_dir),
           "KASHF_IMAGE_MODEL": "image/tiny-clip", "KASHF_DEVICE": "cpu", "KASHF_HEALTH_HOST": "127.0.0.1",
           "KASHF_HEALTH_PORT": str(port), "KASHF_DRAIN_TIMEOUT_S": "10",
           # A long batching wait keeps the request in flight when SIGTERM arrives.
           "KASHF_MAX_WAIT_MS": "1500"}
    log = tmp_path / "vision.log"
    proc = spawn(env, log)
    try:
        ready = await wait_for(proc, log, f"http://127.0.0.1:{port}/readyz", 200)
        assert ready.json()["checks"] == {"nats": True, "setup": True, "model": True}
        buf = io.BytesIO()
        Image.new("RGB", (50, 40), (230, 25, 25)).save(buf, format="PNG")
        request = TagImagesRequest(head=HeadRef(dataset_id=1), tags=[TagRef(id=5, title="red")],
                                   images=[MediaInput(data=base64.b64encode(buf.getvalue()))])
        client = await Bus.connect(nats_url, "test-client")
        try:
            metrics = await wait_for(proc, log, f"http://127.0.0.1:{port}/metrics", 200)
            assert "kashf_ready" in metrics.text
            in_flight = asyncio.create_task(client.request(VISION_TAG, request, TagReply, timeout_s=10))
            await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            reply = await in_flight
            code = await asyncio.to_thread(proc.wait, 15)
        finally:
            await client.close()
        assert reply.items[0].tags == [ScoredTag(id=5, title="red", probability=1.0)]
        assert code == 0, tail(log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
