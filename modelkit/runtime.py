"""Process harness shared by the model services and the trainer (``run_service``): logging, /healthz /readyz
/metrics, the bus (retried until NATS answers), the service's ``setup``, and on SIGTERM/SIGINT a drain
(no new requests, running handlers finish, shutdown hooks run, exit 0)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import structlog
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelkit.metrics import default_metrics
from shared.bus import Bus
from shared.logging import configure_logging
from shared.natsauth import server_urls
from shared.settings import CommonSettings

log = structlog.get_logger(__name__)

Check = Callable[[], bool | Awaitable[bool]]
Hook = Callable[[], Awaitable[None]]


@dataclass
class Readiness:
    """What ``setup`` hands back: readiness checks beyond NATS, and shutdown hooks run before the bus
    drains (consumers that still need it to finish or hand back work) or after it (models, pools)."""

    checks: dict[str, Check] = field(default_factory=dict)
    drain_hooks: list[Hook] = field(default_factory=list)
    shutdown_hooks: list[Hook] = field(default_factory=list)

    def add_check(self, name: str, check: Check) -> None:
        self.checks[name] = check

    def before_drain(self, hook: Hook) -> None:
        self.drain_hooks.append(hook)

    def on_shutdown(self, hook: Hook) -> None:
        self.shutdown_hooks.append(hook)

    async def evaluate(self) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for name, check in self.checks.items():
            try:
                result = check()
                out[name] = bool(await result) if isinstance(result, Awaitable) else bool(result)
            except Exception:
                log.warning("readiness_check_failed", check=name, exc_info=True)
                out[name] = False
        return out


Setup = Callable[[Bus], Awaitable[Readiness]]


@dataclass
class _State:
    bus: Bus | None = None
    readiness: Readiness | None = None
    stopping: bool = False

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, bool] = {
            "nats": self.bus is not None and self.bus.nc.is_connected,
            "setup": self.readiness is not None,
        }
        if self.readiness is not None:
            checks |= await self.readiness.evaluate()
        ok = all(checks.values()) and not self.stopping
        return ok, {"ready": ok, "stopping": self.stopping, "checks": checks}


def health_app(state: _State, registry: CollectorRegistry = REGISTRY) -> Starlette:
    """GET /healthz (alive), /readyz (503 until NATS is up and the model warmed), /metrics."""

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(_: Request) -> Response:
        ok, body = await state.ready()
        default_metrics().ready.set(1 if ok else 0)
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
    ])


class _QuietServer(uvicorn.Server):
    # The harness owns SIGTERM/SIGINT: uvicorn must neither take them nor re-raise them on exit.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def nats_answers(url: str, timeout_s: float = 2.0) -> bool:
    """True when a NATS server ``url`` names (one of a comma-separated list) greets on its host and port."""
    for one in server_urls(url):
        if await _one_answers(one, timeout_s):
            return True
    return False


async def _one_answers(url: str, timeout_s: float) -> bool:
    parts = urlsplit(url)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 4222), timeout_s
        )
    except (OSError, TimeoutError):
        return False
    try:
        line = await asyncio.wait_for(reader.readline(), timeout_s)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return line.startswith(b"INFO")


async def connect_bus(url: str, name: str, stop: asyncio.Event, *, max_wait_s: float = 5.0) -> Bus | None:
    """Connect once NATS answers, retrying with backoff (each try logged); None if stopped first."""
    # nats-py retries an initial connect forever on its own, so the server is probed first and the
    # connect itself raced against ``stop``.
    delay, attempt = 0.2, 0
    while not stop.is_set():
        attempt += 1
        if await nats_answers(url):
            connecting = asyncio.ensure_future(Bus.connect(url, name))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if connecting.done() and connecting.exception() is None:
                return connecting.result()
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await connecting
        log.warning("nats_connect_failed", url=_safe_url(url), attempt=attempt, retry_in_s=delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, max_wait_s)
    return None


def _safe_url(url: str) -> str:
    # Never log credentials embedded in the URL.
    return ",".join(f"{p.scheme}://{p.hostname}:{p.port or 4222}" for p in map(urlsplit, server_urls(url)))


async def serve_process(name: str, settings: CommonSettings, setup: Setup) -> int:
    """The body of ``run_service`` inside a running loop; returns the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    state = _State()
    server = _QuietServer(uvicorn.Config(
        health_app(state), host=settings.health_host, port=settings.health_port,
        log_level="warning", lifespan="off", access_log=False, log_config=None,
    ))
    http = asyncio.create_task(server.serve(), name="health-http")
    code = 0
    try:
        state.bus = await connect_bus(settings.nats_url, name, stop)
        if state.bus is not None:
            log.info("nats_connected", url=_safe_url(settings.nats_url))
            code = await _setup_then_wait(name, state, state.bus, setup, stop)
    finally:
        state.stopping = True
        await _shutdown(state, settings.drain_timeout_s)
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await http
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("service_stopped", service=name, exit_code=code)
    return code


async def _setup_then_wait(name: str, state: _State, bus: Bus, setup: Setup, stop: asyncio.Event) -> int:
    start = time.perf_counter()
    setup_task: asyncio.Task[Readiness] = asyncio.ensure_future(setup(bus))
    stop_task = asyncio.create_task(stop.wait())
    await asyncio.wait({setup_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    if not setup_task.done():
        log.info("stopped_during_setup", service=name)
        setup_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await setup_task
        return 0
    stop_task.cancel()
    try:
        state.readiness = setup_task.result()
    except Exception:
        log.exception("setup_failed", service=name)
        return 1
    log.info("service_ready", service=name, setup_s=round(time.perf_counter() - start, 3))
    await stop.wait()
    log.info("service_stopping", service=name)
    return 0


async def _shutdown(state: _State, drain_timeout_s: float) -> None:
    if state.bus is not None and state.readiness is not None:
        await stop_service(state.bus, state.readiness, drain_timeout_s)
    elif state.bus is not None:
        await state.bus.close(drain_timeout_s)


async def stop_service(bus: Bus, readiness: Readiness, drain_timeout_s: float) -> None:
    """What SIGTERM does once setup ran: drain hooks, the bus drained and closed, then shutdown hooks."""
    deadline = time.monotonic() + drain_timeout_s
    await _run_hooks(readiness.drain_hooks, deadline)
    left = max(0.1, deadline - time.monotonic())
    try:
        await asyncio.wait_for(bus.close(left), left)
    except TimeoutError:
        log.warning("drain_timed_out", timeout_s=drain_timeout_s)
    await _run_hooks(readiness.shutdown_hooks, deadline)


async def _run_hooks(hooks: list[Hook], deadline: float) -> None:
    for hook in hooks:
        left = max(0.1, deadline - time.monotonic())
        try:
            await asyncio.wait_for(hook(), left)
        except Exception:
            log.exception("shutdown_hook_failed")


def run_service(name: str, settings: CommonSettings, setup: Setup) -> int:
    """Run one service process to completion; the return value is the exit code."""
    configure_logging(name, level=settings.log_level, json=settings.log_json)
    return asyncio.run(serve_process(name, settings, setup))
