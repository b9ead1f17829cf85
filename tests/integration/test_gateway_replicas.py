"""Gateway replicas: two ``python -m gateway`` processes on their own ports, one Postgres and one NATS (under the
services' NATS users). Two clients of one account, each spreading its calls over both gateways, send twice the
account's rate: the excess is refused with 429 (the rate holds across replicas, gateway.infra.sharedrate), and
the tags predicted by either gateway add up in dataset_info. The same run against one gateway passes too.

No model is needed: text_service's subject is answered by a responder under text_service's NATS user (it tags
every text with the dataset's first tag), so the test exercises the gateways alone. The module has a nats-server
of its own: on the suite's, the session stack's real text_service shares the queue group and answers some calls
(with the unknown tag, which counts no prediction)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from devtools import servers
from devtools.stack import Stack, create_token
from shared import natsauth
from shared.bus import Bus
from shared.schemas.inference import ItemResult, ScoredTag, TagReply, TagTextsRequest
from shared.subjects import TEXT_TAG
from tests.integration.conftest import NatsServer

pytestmark = pytest.mark.integration

PER_MINUTE, BURST = 600, 10  # 10 requests a second per account, bursts of 10
RATE_S = PER_MINUTE / 60
SECONDS = 8.0  # how long the two clients send
CLIENT_RATE_S = RATE_S  # each client alone sends the account's rate: together twice it
DELAY_S = 0.5  # how much later than it is sent a call may reach a gateway's limiter


@pytest.fixture(scope="module")
def own_servers(stack_servers: tuple[str, str], nats_passwords: dict[str, str],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The suite's database, and a nats-server (same NATS users) that no other service listens on."""
    nats = NatsServer(tmp_path_factory.mktemp("replicas-nats"), nats_passwords)
    yield stack_servers[0], nats.url
    nats.stop()


@pytest.fixture(scope="module")
def gateways(own_servers: tuple[str, str], nats_passwords: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Stack]]:
    database_url, nats_url = own_servers
    log_dir = tmp_path_factory.mktemp("replica-logs")
    env = {"KASHF_RATE_PER_MINUTE": str(PER_MINUTE), "KASHF_RATE_BURST": str(BURST), "KASHF_ENVIRONMENT": "test"}
    started = [Stack(database_url, nats_url, gateway_port=servers.free_port(), services=("gateway",), env=env,
                     log_dir=log_dir / f"gateway-{i}", nats_passwords=nats_passwords) for i in range(2)]
    try:
        for gateway in started:
            gateway.start_all()
        for gateway in started:
            gateway.wait_ready(timeout_s=120)
    except Exception:
        for gateway in started:
            gateway.stop_all()
        for log in sorted(log_dir.rglob("*.log")):
            print(f"==== {log}\n{log.read_text(errors='replace')[-4000:]}")
        raise
    yield started
    for gateway in started:
        gateway.stop_all()


@pytest.fixture(scope="module")
async def text_responder(own_servers: tuple[str, str], nats_passwords: dict[str, str]) -> AsyncIterator[None]:
    """Answers kashf.text.tag.v1 in text_service's queue group: every text gets the request's first tag."""
    url = natsauth.with_user(own_servers[1], "text_service", nats_passwords["text_service"])
    bus = await Bus.connect(url, "text_service")

    async def tag(request: TagTextsRequest) -> TagReply:
        first = request.tags[0]
        return TagReply(model_id="responder", items=[
            ItemResult(tags=[ScoredTag(id=first.id, title=first.title, probability=0.9)]) for _ in request.texts])

    await bus.serve(TEXT_TAG, TagTextsRequest, tag, concurrency=64)
    yield
    await bus.close(2)


async def post_until_admitted(client: httpx.AsyncClient, url: str, body: object) -> httpx.Response:
    """POST, waiting out 429s as a client should (after the Retry-After it was given)."""
    while True:
        response = await client.post(url, json=body)
        if response.status_code != 429:
            return response
        await asyncio.sleep(float(response.headers["Retry-After"]))


async def send_twice_the_rate(urls: list[str], token: str) -> tuple[list[int], float]:
    """Two clients, each sending CLIENT_RATE_S tag_texts calls a second for SECONDS, on a fixed schedule (not
    waiting for answers), alternating between ``urls``; returns every call's status and the seconds from the
    first call sent to the last."""
    headers = {"Authorization": f"Token {token}"}
    statuses: list[int] = []
    async with httpx.AsyncClient(headers=headers, timeout=30) as one, httpx.AsyncClient(headers=headers,
                                                                                         timeout=30) as two:
        async def call(client: httpx.AsyncClient, url: str, n: int) -> None:
            body = {"dataset": "replicas", "contents": [f"text {n}"]}
            statuses.append((await client.post(f"{url}/api/tag_texts/", json=body)).status_code)

        calls = int(SECONDS * CLIENT_RATE_S)
        start = time.monotonic()
        tasks = []
        for n in range(calls):
            for c, client in enumerate((one, two)):  # the second client half a period behind the first
                due = start + (n + c / 2) / CLIENT_RATE_S
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                tasks.append(asyncio.create_task(call(client, urls[(n + c) % len(urls)], n)))
        span = time.monotonic() - start
        await asyncio.gather(*tasks)
    return statuses, span


@pytest.mark.parametrize("replicas", [2, 1])
async def test_two_clients_at_twice_the_rate_over_the_gateways_get_429_for_the_excess(
    gateways: list[Stack], text_responder: None, stack_servers: tuple[str, str], replicas: int,
) -> None:
    urls = [g.url for g in gateways[:replicas]]
    token = create_token(stack_servers[0], f"it-replicas-{replicas}")
    async with httpx.AsyncClient(headers={"Authorization": f"Token {token}"}, timeout=30) as setup:
        created = await post_until_admitted(setup, f"{urls[0]}/api/create_tag/",
                                            {"dataset": "replicas", "title": "first"})
        assert created.status_code == 200, created.text
        tag_id = created.json()["tag_id"]
        await asyncio.sleep(BURST / RATE_S + 0.5)  # the account's bucket full again

        statuses, span = await send_twice_the_rate(urls, token)
        sent, admitted, refused = len(statuses), statuses.count(200), statuses.count(429)
        budget = BURST + RATE_S * span  # the account's tokens over the run: the burst, then the rate
        print(f"\n{replicas} gateway(s): {sent} calls sent over {span:.2f} s (budget {budget:.1f}): "
              f"{admitted} answered, {refused} refused (429)")
        assert admitted + refused == sent, statuses
        # Tolerance: a call reaches the limiter after it is sent, by up to DELAY_S on this busy machine, which
        # stretches or shrinks the window in which tokens accrue by that much at either end: +-DELAY_S of rate.
        # Below that, the slices the replicas leased and left unused at the end: at most a quarter of the burst
        # (2 here) per replica. Per-process buckets would answer all 160 (each gateway saw its own rate).
        assert budget - RATE_S * DELAY_S - 2 * replicas <= admitted <= budget + RATE_S * DELAY_S, (admitted, budget)

        async def predictions() -> int:
            info = await post_until_admitted(setup, f"{urls[-1]}/api/dataset_info/",
                                             {"dataset": "replicas", "tags": True})
            return sum(t["predictions"] for t in info.json()["tags"] if t["id"] == tag_id)

        # Each answered call predicted the tag once, on whichever gateway answered it; every gateway writes its
        # counts to Postgres within a second, so any gateway reports them all.
        for _ in range(20):
            if (counted := await predictions()) == admitted:
                break
            await asyncio.sleep(0.5)
        assert counted == admitted
