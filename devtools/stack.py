"""Run the whole stack as separate processes: ``make up`` and the integration tests use this.

Each service is its own process (as in production), its output prefixed with its name; Ctrl-C or
SIGTERM stops them all, gateway first so no request is cut.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from devtools import servers
from shared import natsauth
from shared.db.migrate import upgrade

SERVICES = ("text_service", "vision_service", "video_service", "trainer", "gateway")
PREFIX_WIDTH = max(len(s) for s in SERVICES)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    health_url: str
    pump: threading.Thread | None = None


@dataclass
class Stack:
    """The five services over one database and one NATS server."""

    database_url: str
    nats_url: str
    gateway_port: int = 8000
    services: tuple[str, ...] = SERVICES
    env: Mapping[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    echo: bool = True
    # Per-service NATS passwords when the server enforces shared.natsauth (each service connects as itself).
    nats_passwords: Mapping[str, str] | None = None
    procs: dict[str, Process] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def service_env(self, name: str, health_port: int) -> dict[str, str]:
        nats_url = self.nats_url
        if self.nats_passwords:
            nats_url = natsauth.with_user(nats_url, name, self.nats_passwords[name])
        env = {**os.environ, **self.env, "DATABASE_URL": self.database_url, "NATS_URL": nats_url,
               "KASHF_HEALTH_PORT": str(health_port), "KASHF_HEALTH_HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
        if name == "gateway":
            env["PORT"] = str(self.gateway_port)
            env["HOST"] = "127.0.0.1"
        return env

    def start(self, name: str) -> Process:
        """Start one service (again, after a kill) and return at once."""
        port = self.gateway_port if name == "gateway" else servers.free_port()
        health = f"http://127.0.0.1:{port}/readyz"
        out: IO[bytes] | int
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = (self.log_dir / f"{name}.log").open("ab")
        else:
            out = subprocess.PIPE
        popen = subprocess.Popen([sys.executable, "-m", name], env=self.service_env(name, port),
                                 stdout=out, stderr=subprocess.STDOUT)
        proc = Process(name, popen, health)
        if out is subprocess.PIPE:
            proc.pump = threading.Thread(target=self._pump, args=(name, popen), daemon=True)
            proc.pump.start()
        self.procs[name] = proc
        return proc

    def _pump(self, name: str, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdout is not None
        for line in iter(popen.stdout.readline, b""):
            if self.echo:
                sys.stdout.write(f"{name:<{PREFIX_WIDTH}} | {line.decode(errors='replace')}")
                sys.stdout.flush()

    def start_all(self) -> None:
        for name in self.services:
            self.start(name)

    def wait_ready(self, names: Iterator[str] | tuple[str, ...] | None = None, timeout_s: float = 180.0) -> None:
        """Block until every named service answers 200 on /readyz; fail fast if one exits."""
        deadline = time.monotonic() + timeout_s
        pending = list(names or self.procs)
        with httpx.Client(timeout=2.0) as client:
            while pending:
                name = pending[0]
                proc = self.procs[name]
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.popen.returncode} before it was ready")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(proc.health_url).status_code == 200:
                        pending.pop(0)
                        continue
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not ready after {timeout_s:g} s")
                time.sleep(0.2)

    def stop(self, name: str, *, kill: bool = False, timeout_s: float = 30.0) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.popen.poll() is not None:
            return None if proc is None else proc.popen.returncode
        proc.popen.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            return proc.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            return proc.popen.wait()

    def stop_all(self) -> None:
        # Gateway first so it stops taking requests before the services behind it drain.
        for name in sorted(self.procs, key=lambda n: n != "gateway"):
            self.stop(name)


@dataclass
class Supervisor:
    """Restarts a service that exits, as Kubernetes would: after 1, 2, 4 ... up to 30 s; the delay starts
    again at 1 s once the service has stayed up for a minute."""

    stack: Stack
    max_delay_s: float = 30.0
    healthy_after_s: float = 60.0
    _delay: dict[str, float] = field(default_factory=dict)
    _due: dict[str, float] = field(default_factory=dict)
    _started: dict[str, float] = field(default_factory=dict)

    def check(self, now: float) -> None:
        for name in self.stack.services:
            proc = self.stack.procs.get(name)
            if proc is not None and proc.popen.poll() is None:
                if now - self._started.get(name, now) >= self.healthy_after_s:
                    self._delay.pop(name, None)
                continue
            if proc is not None:  # it just exited: schedule the restart
                delay = min(self._delay.get(name, 0.5) * 2, self.max_delay_s)
                self._delay[name], self._due[name] = delay, now + delay
                print(f"{name} exited with {proc.popen.returncode}; restarting in {delay:g} s", flush=True)
                self.stack.procs.pop(name)
            elif now >= self._due.get(name, now):
                print(f"restarting {name}", flush=True)
                self.stack.start(name)
                self._started[name] = now


def create_token(database_url: str, account: str) -> str:
    out = subprocess.run([sys.executable, "-m", "gateway.admin", "create-token", account],
                         env={**os.environ, "DATABASE_URL": database_url}, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def _up(args: argparse.Namespace) -> int:
    state = Path(args.state_dir)
    handles: list[object] = []
    nats_proc = None
    nats_url = os.environ.get("NATS_URL")
    passwords = servers.nats_passwords() if os.environ.get("KASHF_NATS_AUTH", "") not in ("", "0") else None
    if not nats_url:
        nats_proc, nats_url = servers.start_nats(state / "nats", passwords=passwords)
        users = " with a user per service (shared/natsauth.py)" if passwords else ""
        print(f"started nats-server (JetStream) at {nats_url.rsplit('@', 1)[-1]}{users}", flush=True)
    elif passwords:
        print("KASHF_NATS_AUTH applies to the embedded nats-server only; using NATS_URL as given", flush=True)
        passwords = None
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        server, handle = servers.postgres_server(state / "postgres")
        handles.append(handle)
        database_url = asyncio.run(servers.create_database(server, "kashf"))
        print(f"using Postgres database {database_url.rsplit('@', 1)[-1]}", flush=True)
    upgrade(database_url)
    token = create_token(database_url, "dev")
    # kashf-admin, run from this folder while the stack is up, finds this database (and NATS) here.
    stack_env = state / "stack.env"
    stack_env.parent.mkdir(parents=True, exist_ok=True)
    stack_env.touch(mode=0o600)
    stack_env.write_text(f"DATABASE_URL={database_url}\nNATS_URL={nats_url}\n", encoding="utf-8")
    stack = Stack(database_url, nats_url, gateway_port=int(os.environ.get("PORT", "8000")), nats_passwords=passwords)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        stack.start_all()
        stack.wait_ready(timeout_s=args.ready_timeout)
        print(f"\nKashf is up at {stack.url}  (docs: {stack.url}/docs)", flush=True)
        print(f"web console: {stack.url}/ui/  (sign in with the token below)", flush=True)
        print(f"API token for account 'dev':\n{token}\n", flush=True)
        print(f"try: curl -H 'Authorization: Token {token}' -H 'Content-Type: application/json' "
              f"-d '{{\"dataset\": \"demo\", \"title\": \"first tag\"}}' {stack.url}/api/create_tag/", flush=True)
        supervisor = Supervisor(stack)
        while not stopping.is_set():
            supervisor.check(time.monotonic())
            stopping.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping ...", flush=True)
        stack_env.unlink(missing_ok=True)
        stack.stop_all()
        if nats_proc is not None:
            nats_proc.terminate()
            nats_proc.wait(timeout=10)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.stack")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the whole stack (embedded NATS/Postgres when not given)")
    up.add_argument("--state-dir", default=os.environ.get("KASHF_STATE_DIR", ".kashf"))
    up.add_argument("--ready-timeout", type=float, default=300.0)
    args = parser.parse_args()
    raise SystemExit(_up(args))


if __name__ == "__main__":
    main()
