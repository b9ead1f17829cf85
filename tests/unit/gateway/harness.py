"""Gateway test helpers: the real app (lifespan running) on the session's real Postgres and NATS, in process or
served by uvicorn as `python -m gateway` serves it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import nats
import nats.js.errors
import uvicorn
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from gateway.app import create_app
from gateway.server import server_config
from gateway.service.auth import create_token
from gateway.state import AppState
from shared.settings import GatewaySettings
from shared.subjects import RATE_BUCKET, Subject

PEPPER = "test-pepper"


@dataclass
class Gateway:
    """A running app and a client for it; ``token(account)`` makes an API token."""

    client: httpx.AsyncClient
    settings: GatewaySettings
    app: Any
    state: AppState

    async def token(self, account: str) -> str:
        async with self.state.unit_of_work() as uow:
            _, token = await create_token(uow.repo, account, PEPPER)
            await uow.commit()
        return token

    async def post(self, path: str, body: Any, token: str | None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Token {token}"} if token else {}
        headers.update(kwargs.pop("headers", {}))
        return await self.client.post(path, json=body, headers=headers, **kwargs)


def make_settings(database_url: str, nats_url: str, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "nats_url": nats_url,
        "token_pepper": PEPPER,
        "outbox_sweep_s": 0.2,
        "fetch_allow_hosts": "127.0.0.1",
        "drain_timeout_s": 2.0,
        **overrides,
    }
    return GatewaySettings(**values)


async def forget_rates(nats_url: str) -> None:
    """Empty the shared rate-limit bucket: clean_db restarts account ids at 1, and a new test's account 1 must
    not inherit the tokens an earlier test's account 1 spent."""
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().purge_stream(f"KV_{RATE_BUCKET}")
    except nats.js.errors.NotFoundError:
        pass  # no gateway has declared it yet
    finally:
        await nc.close()


@asynccontextmanager
async def running(settings: GatewaySettings) -> AsyncIterator[Gateway]:
    await forget_rates(settings.nats_url)
    app = create_app(settings)
    async with app.router.lifespan_context(app) as lifespan_state:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kashf.test") as client:
            yield Gateway(client, settings, app, lifespan_state["kashf"])


@dataclass
class Served:
    port: int
    token: str  # of account "acme"


@asynccontextmanager
async def serving(database_url: str, nats_url: str, **overrides: Any) -> AsyncIterator[Served]:
    """The app behind the real uvicorn server the gateway runs (``gateway.server``), on a free loopback port."""
    settings = make_settings(database_url, nats_url, host="127.0.0.1", port=0, **overrides)
    await forget_rates(nats_url)
    app = create_app(settings)
    server = uvicorn.Server(server_config(app, settings))
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started

    assert await eventually(started, timeout_s=20)
    state: AppState = app.state.kashf
    async with state.unit_of_work() as uow:
        _, token = await create_token(uow.repo, "acme", PEPPER)
        await uow.commit()
    try:
        yield Served(server.servers[0].sockets[0].getsockname()[1], token)
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def responder(
    nats_url: str,
    subject: Subject,
    handle: Callable[[bytes], Awaitable[bytes | None]],
    headers_seen: list[dict[str, str]] | None = None,
) -> AsyncIterator[NATS]:
    """A real subscriber in the service's queue group; ``handle`` returns the reply (None: never answer)."""
    nc = await nats.connect(nats_url)

    async def on_msg(msg: Msg) -> None:
        if headers_seen is not None:
            headers_seen.append(dict(msg.headers or {}))
        reply = await handle(msg.data)
        if reply is not None and msg.reply:
            await nc.publish(msg.reply, reply)

    await nc.subscribe(subject.name, queue=subject.queue, cb=on_msg)
    await nc.flush()
    try:
        yield nc
    finally:
        await nc.close()


async def sql(database_url: str, statement: str, *args: Any) -> list[Any]:
    """Run one statement with asyncpg (test-side checks and crash simulation)."""
    import asyncpg

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return list(await conn.fetch(statement, *args))
    finally:
        await conn.close()


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 5.0) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await check()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.05)


def png_bytes(variant: int = 0, size: int = 64) -> bytes:
    """A real photo (skimage's astronaut), cropped differently per variant, as PNG."""
    import io

    from PIL import Image
    from skimage import data

    photo = data.astronaut()
    crop = photo[variant * 16 : variant * 16 + size, 100 : 100 + size]
    buffer = io.BytesIO()
    Image.fromarray(crop).save(buffer, format="PNG")
    return buffer.getvalue()
