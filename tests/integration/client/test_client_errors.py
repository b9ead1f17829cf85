"""Every error status of the SPEC reaches the caller as one KashfError carrying the status, the API's code and
its detail. Produced by the real stack where it can answer them on demand; 503 and 504 come from an httpx
MockTransport, since the stack answers them only while a service is down or too slow, which would disturb the
other tests sharing the session's stack (their retries are tested in tests/unit/client/test_transport.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from devtools import servers
from devtools.stack import Stack
from kashf_client import AsyncClient, Client, ImageReport, KashfError, Retry, TextReport

pytestmark = pytest.mark.integration

NO_RETRY = Retry(attempts=1)


@dataclass(frozen=True)
class Env:
    client: Client
    tight: Client  # the second gateway: a tiny rate
    image_tag: int
    stack: Stack


def _mock(status: int, code: str, detail: str) -> Client:
    body = {"error": code, "detail": detail}
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json=body))
    return Client("http://kashf.test", "t", retry=NO_RETRY, transport=transport)


def _exhaust_rate(env: Env) -> None:
    for _ in range(50):
        env.tight.list_datasets()


CASES: list[tuple[int, str, str, Callable[[Env], object]]] = [
    (400, "wrong_dataset_kind", "holds images, not texts",
     lambda e: e.client.report_text_tags([TextReport(content="a text", tag_id=e.image_tag)])),
    (401, "unauthorized", "token", lambda e: Client(e.stack.url, "not-a-token", retry=NO_RETRY).list_datasets()),
    (404, "dataset_not_found", "'no-such-dataset' not found", lambda e: e.client.dataset_info("no-such-dataset")),
    (405, "method_not_allowed", "use POST", lambda e: e.client.request("GET", "/api/tag_texts/")),
    (413, "too_large", "KASHF_MAX_TEXT_CHARS", lambda e: e.client.tag_texts("cli-errors-img", ["x" * 6000])),
    (415, "unsupported_content_type", "application/json",
     lambda e: e.client.request("POST", "/api/tag_texts/", content=b"x", headers={"Content-Type": "text/plain"})),
    (422, "invalid", "contents", lambda e: e.client.request("POST", "/api/tag_texts/", json={"dataset": "x"})),
    (429, "rate_limited", "KASHF_RATE_PER_MINUTE", _exhaust_rate),
    # A closed port on the allowlisted loopback: the server cannot fetch the image.
    (502, "fetch_failed", "image_url",
     lambda e: e.client.report_image_tags([ImageReport(image_url=f"http://127.0.0.1:{servers.free_port()}/a.jpg",
                                                       tag_id=e.image_tag)])),
    (503, "unavailable", "text model service unavailable",
     lambda e: _mock(503, "unavailable", "text model service unavailable").tag_texts("d", ["a"])),
    (504, "timeout", "text model service did not answer in time",
     lambda e: _mock(504, "timeout", "text model service did not answer in time").tag_texts("d", ["a"])),
]


@pytest.fixture(scope="module")
def env(stack: Stack, tight_gateway: Stack, token: str) -> Env:
    client = Client(stack.url, token, retry=NO_RETRY)
    client.create_dataset("cli-errors-img", kind="image")
    tag = client.create_tag("cli-errors-img", "a place")
    return Env(client, Client(tight_gateway.url, token, retry=NO_RETRY), tag.tag_id, stack)


@pytest.mark.parametrize(("status", "code", "detail", "call"), CASES, ids=[str(c[0]) for c in CASES])
def test_each_error_status_is_one_kashf_error(env: Env, status: int, code: str, detail: str,
                                              call: Callable[[Env], object]) -> None:
    with pytest.raises(KashfError) as caught:
        call(env)
    error = caught.value
    assert (error.status, error.error) == (status, code)
    assert detail in error.detail
    if status == 429:
        assert error.retry_after is not None and error.retry_after >= 1


async def test_the_async_client_raises_the_same_error(stack: Stack, token: str) -> None:
    async with AsyncClient(stack.url, token) as client:
        with pytest.raises(KashfError) as caught:
            await client.dataset_info("no-such-dataset")
    assert (caught.value.status, caught.value.error) == (404, "dataset_not_found")


def test_another_accounts_dataset_is_404(stack: Stack, token: str, other_token: str) -> None:
    with Client(stack.url, token) as mine, Client(stack.url, other_token) as theirs:
        mine.create_tag("cli-private", "secret")
        with pytest.raises(KashfError) as caught:
            theirs.dataset_info("cli-private")
    assert caught.value.status == 404
