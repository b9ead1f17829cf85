"""What `make up` runs (`python -m devtools.stack up`): the whole stack, the URL and a working token printed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from devtools import servers

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("nats_auth", [False, True], ids=["open-nats", "nats-users"])
def test_stack_up_prints_url_and_token_then_stops_cleanly(database_url: str, tmp_path: Path, nats_auth: bool) -> None:
    port = servers.free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "PORT": str(port), "KASHF_MODELS_DIR": str(REPO / "models"),
           "KASHF_NATS_AUTH": "1" if nats_auth else "0"}
    env.pop("NATS_URL", None)  # so it starts its own nats-server from the wheel
    proc = subprocess.Popen([sys.executable, "-m", "devtools.stack", "up", "--state-dir", str(tmp_path / "state")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        lines.extend(iter(proc.stdout.readline, ""))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not any(line.startswith("try: curl") for line in lines):
            assert proc.poll() is None, "".join(lines[-40:])
            time.sleep(0.2)
        output = "".join(lines)
        assert f"Kashf is up at http://127.0.0.1:{port}" in output, output[-3000:]
        assert "started nats-server (JetStream)" in output
        token = output.split("API token for account 'dev':\n", 1)[1].splitlines()[0].strip()
        assert re.fullmatch(r"[A-Za-z0-9_\-]{20,}", token)
        # Every service logs with its name as prefix.
        for name in ("gateway", "text_service", "vision_service", "video_service", "trainer"):
            assert any(line.startswith(f"{name} ") for line in lines), name
        r = httpx.post(f"http://127.0.0.1:{port}/api/create_tag/", headers={"Authorization": f"Token {token}"},
                       json={"dataset": "demo", "title": "first tag"}, timeout=30)
        assert r.status_code == 200 and r.json()["title"] == "first tag", r.text
        assert ("with a user per service" in output) == nats_auth
        r = httpx.post(f"http://127.0.0.1:{port}/api/tag_texts/", headers={"Authorization": f"Token {token}"},
                       json={"dataset": "demo", "contents": ["سلام"]}, timeout=60)  # gateway -> text_service
        assert r.status_code == 200 and r.json()[0]["content"] == "سلام", r.text
        # A crashed service is restarted (as Kubernetes would) and says so; tagging works again.
        text = next(c for c in psutil.Process(proc.pid).children(recursive=True)
                    if "text_service" in " ".join(c.cmdline()))
        text.kill()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            again = httpx.post(f"http://127.0.0.1:{port}/api/tag_texts/", headers={"Authorization": f"Token {token}"},
                               json={"dataset": "demo", "contents": ["دوباره"]}, timeout=60)
            if any(line.startswith("restarting text_service") for line in lines) and again.status_code == 200:
                break
            time.sleep(0.5)
        assert any(re.match(r"text_service exited with -9; restarting in 1 s", line) for line in lines), lines[-20:]
        assert again.status_code == 200, again.text
        # The operator command, run with no settings beside the running stack, finds the stack's database.
        admin_env = {k: v for k, v in env.items() if k != "DATABASE_URL"}
        admin_env["KASHF_STATE_DIR"] = str(tmp_path / "state")
        made = subprocess.run([sys.executable, "-m", "gateway.admin", "create-token", "ops"], cwd=tmp_path,
                              env=admin_env, capture_output=True, text=True, timeout=60, check=False)
        assert made.returncode == 0, made.stderr
        assert "using the dev stack's database" in made.stderr
        second = made.stdout.strip().splitlines()[-1]
        r = httpx.post(f"http://127.0.0.1:{port}/api/list_datasets/", headers={"Authorization": f"Token {second}"},
                       json={}, timeout=30)
        assert r.status_code == 200, r.text
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 6  # five services and nats-server
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=90)
    assert code == 0, "".join(lines[-40:])
    assert not (tmp_path / "state" / "stack.env").exists()  # a stopped stack is not found by kashf-admin
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
