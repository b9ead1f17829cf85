"""NATS users: each service may do what it does, and nothing a compromised pod of it could abuse."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import nats
import nats.errors
import numpy as np
import pytest

from devtools import servers
from modelkit.heads import Head, load_head, store_head
from shared import natsauth, subjects
from shared.bus import Bus, ensure_streams
from shared.bus.blobs import BlobStore
from shared.bus.streams import declare_key_value, rate_config
from shared.errors import Unavailable

Server = tuple[str, dict[str, str]]


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    passwords = servers.nats_passwords()
    proc, admin_url = servers.start_nats(tmp_path_factory.mktemp("nats-auth"), passwords=passwords)
    yield admin_url, passwords
    proc.terminate()
    proc.wait(timeout=10)


def url_of(server: Server, user: str) -> str:
    return natsauth.with_user(server[0], user, server[1][user])


@pytest.fixture
async def buses(auth_server: Server) -> AsyncIterator[dict[str, Bus]]:
    out = {user: await Bus.connect(url_of(auth_server, user), user) for user in natsauth.SERVICES}
    for bus in out.values():
        await ensure_streams(bus.js)  # every service may declare what it uses, as it does at start
    yield out
    for bus in out.values():
        await bus.nc.close()


async def violations(server: Server, user: str, act: Callable[[nats.NATS], Awaitable[object]]) -> list[str]:
    """Run ``act`` on a fresh connection of ``user``; the permission violations the server reported."""
    seen: list[str] = []

    async def on_error(exc: Exception) -> None:
        seen.append(str(exc))

    nc = await nats.connect(url_of(server, user), error_cb=on_error, inbox_prefix=natsauth.inbox_prefix(user),
                            allow_reconnect=False)
    try:
        await act(nc)
        await nc.flush()
        await asyncio.sleep(0.3)  # the server's -ERR arrives after the flush's PONG at the latest
    finally:
        await nc.close()
    return [v for v in seen if "permissions violation" in v.lower()]


def _head(version: int) -> Head:
    return Head(model_id="m@1", version=version, tag_ids=np.array([3]), weights=np.ones((1, 4), np.float32),
                bias=np.zeros(1, np.float32), calibration=np.array([[1.0, 0.0]], np.float32),
                thresholds=np.array([0.5], np.float32))


async def test_clients_without_a_user_or_with_a_wrong_password_are_refused(auth_server: Server) -> None:
    bare = auth_server[0].split("://", 1)[0] + "://" + auth_server[0].split("@", 1)[1]
    for url in (bare, natsauth.with_user(auth_server[0], "text_service", "wrong")):
        with pytest.raises((nats.errors.Error, OSError)):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)


async def test_only_the_trainer_writes_heads_and_every_model_service_reads_them(buses: dict[str, Bus]) -> None:
    await store_head(buses["trainer"].js, 7, _head(1))
    for reader in ("text_service", "vision_service", "video_service"):
        assert (await load_head(buses[reader].js, 7, 1)).tag_ids.tolist() == [3]

    async def write(user: str, dataset_id: int) -> bool:
        try:
            await asyncio.wait_for(store_head(buses[user].js, dataset_id, _head(1)), 4)
        except (TimeoutError, Unavailable):  # denied: the chunks are never acknowledged
            return False
        return True

    others = ("gateway", "text_service", "vision_service", "video_service")
    written = await asyncio.gather(*(write(user, 100 + i) for i, user in enumerate(others)))
    assert written == [False] * 4
    for i in range(len(others)):  # and nothing of theirs landed in the bucket
        with pytest.raises(Unavailable, match="not found"):
            await load_head(buses["trainer"].js, 100 + i, 1)


async def test_uploads_go_from_the_gateway_to_the_services_that_read_them(buses: dict[str, Bus]) -> None:
    key = await BlobStore(buses["gateway"].js).put(b"\xff\xd8\xff" + b"jpeg" * 100)
    for reader in ("vision_service", "video_service"):
        assert (await BlobStore(buses[reader].js).get(key, 10_000)).startswith(b"\xff\xd8\xff")
    await BlobStore(buses["video_service"].js).delete([key])


async def test_model_subjects_are_served_only_by_their_service_and_called_only_by_gateway_and_trainer(
    auth_server: Server,
) -> None:
    async def call(nc: nats.NATS) -> None:
        await nc.publish(subjects.TEXT_TAG.name, b"{}")

    async def serve(nc: nats.NATS) -> None:
        await nc.subscribe(subjects.TEXT_TAG.name, queue="text_service")

    async def publish_event(nc: nats.NATS) -> None:
        await nc.publish(subjects.report_subject(1), b"{}")

    async def read_gateway_replies(nc: nats.NATS) -> None:
        await nc.subscribe(f"{natsauth.inbox_prefix('gateway')}.>")

    async def delete_stream(nc: nats.NATS) -> None:
        await nc.publish(f"$JS.API.STREAM.DELETE.{subjects.EVENTS_STREAM}", b"")

    for user in ("text_service", "vision_service", "video_service"):
        assert await violations(auth_server, user, call), user  # a model pod cannot call other models
        assert await violations(auth_server, user, publish_event), user
        assert await violations(auth_server, user, read_gateway_replies), user
    for user in ("gateway", "vision_service", "trainer"):
        assert await violations(auth_server, user, serve), user  # nobody else can answer text requests
    for user in natsauth.SERVICES:
        assert await violations(auth_server, user, delete_stream), user
    assert not await violations(auth_server, "gateway", call)
    assert not await violations(auth_server, "text_service", serve)
    assert not await violations(auth_server, "gateway", publish_event)


def test_the_config_names_every_service_once_with_its_inbox() -> None:
    config = natsauth.server_config({u: "pw" for u in (*natsauth.SERVICES, "admin")}, port=4222, store_dir="/s")
    for service, allowed in natsauth.permissions().items():
        assert config.count(f'"user": "{service}"') == 1
        assert allowed.subscribe[0] == f"_INBOX.{service}.>"
        assert not any(s.startswith("_INBOX.") and not s.startswith(f"_INBOX.{service}.") for s in allowed.subscribe)
    users = json.loads(config.split("authorization: ", 1)[1])["users"]
    assert [u["user"] for u in users] == ["admin", *natsauth.SERVICES]
    # A reply may follow progress beats (shared.bus heartbeats): more than one message per request.
    assert all(u["permissions"]["allow_responses"]["max"] >= 200 for u in users[1:])


async def test_the_trainer_reads_events_by_subject_and_model_services_cannot(auth_server: Server) -> None:
    async def last_event(nc: nats.NATS) -> None:
        await nc.publish(f"$JS.API.STREAM.MSG.GET.{subjects.EVENTS_STREAM}", b'{"last_by_subj": "x"}')

    assert not await violations(auth_server, "trainer", last_event)  # the stall sweeper's read
    for user in ("text_service", "vision_service", "video_service"):
        assert await violations(auth_server, user, last_event), user


async def test_the_gateways_share_the_rate_bucket_and_no_other_service_writes_it(
    auth_server: Server, buses: dict[str, Bus],
) -> None:
    kv = await declare_key_value(buses["gateway"].js, rate_config(), None)  # as the gateway does at start
    revision = await kv.update("a1", b"5.0 1700000000.0", last=0)  # gateway.infra.sharedrate's write
    assert (await kv.get("a1")).value == b"5.0 1700000000.0"
    await kv.update("a1", b"4.0 1700000001.0", last=revision)

    async def write_rate(nc: nats.NATS) -> None:
        await nc.publish(f"$KV.{subjects.RATE_BUCKET}.a1", b"999.0 1700000002.0")

    assert not await violations(auth_server, "gateway", write_rate)
    for user in ("text_service", "vision_service", "video_service", "trainer"):
        assert await violations(auth_server, user, write_rate), user
