"""Retries and error mapping of the client, over an httpx MockTransport: these are the failures a real stack
answers only while broken (503, 504, a proxy's 502 page, a refused connection); the statuses it can answer on
demand are tested against it in tests/integration/client/test_client_errors.py."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from kashf_client import AsyncClient, Client, KashfError, Retry

FAST = Retry(attempts=3, backoff_s=0.01, max_backoff_s=0.02)
TAGGED = [{"content": "a", "tags": [{"id": 0, "probability": 1, "title": "ناآشنا"}]}]


def _script(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering each request with the next answer (an exception is raised)."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle), seen


def _error(status: int, code: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": code, "detail": f"{code} detail"}, headers=headers)


@pytest.mark.parametrize(("status", "code"), [(503, "unavailable"), (504, "timeout"), (429, "overloaded")])
def test_5xx_and_429_are_retried_then_raised_with_code_and_detail(status: int, code: str) -> None:
    transport, seen = _script(_error(status, code))
    with Client("http://k.test", "t", retry=FAST, transport=transport) as client, pytest.raises(KashfError) as caught:
        client.tag_texts("d", ["a"])
    assert (caught.value.status, caught.value.error, caught.value.detail) == (status, code, f"{code} detail")
    assert len(seen) == FAST.attempts


def test_a_retried_call_succeeds_and_is_counted() -> None:
    transport, seen = _script(_error(503, "unavailable"), httpx.Response(200, json=TAGGED))
    with Client("http://k.test", "t", retry=FAST, transport=transport) as client:
        assert client.tag_texts("d", ["a"])[0].tags[0].id == 0
        assert client.retries == 1 and len(seen) == 2
    assert seen[0].headers["authorization"] == "Token t"


def test_retry_after_is_waited() -> None:
    transport, _ = _script(_error(429, "rate_limited", **{"Retry-After": "1"}), httpx.Response(200, json=TAGGED))
    with Client("http://k.test", "t", retry=FAST, transport=transport) as client:
        started = time.monotonic()
        client.tag_texts("d", ["a"])
    assert time.monotonic() - started >= 1.0


def test_a_refused_connection_is_retried_even_for_a_create() -> None:
    created = httpx.Response(200, json={"title": "x", "tag_id": 5, "active": True})
    transport, seen = _script(httpx.ConnectError("refused"), created)
    with Client("http://k.test", "t", retry=FAST, transport=transport) as client:
        assert client.create_tag("d", "x").tag_id == 5
    assert len(seen) == 2


def test_a_create_is_not_sent_again_after_a_timeout_or_a_504() -> None:
    # The first may have taken effect: sending it again could create a second tag.
    for answer in (httpx.ReadTimeout("slow"), _error(504, "timeout")):
        transport, seen = _script(answer)
        with Client("http://k.test", "t", retry=FAST, transport=transport) as client, pytest.raises(KashfError):
            client.create_tag("d", "x")
        assert len(seen) == 1


def test_an_unreachable_server_is_a_kashf_error_without_status() -> None:
    transport, seen = _script(httpx.ConnectError("refused"))
    with Client("http://k.test", "t", retry=FAST, transport=transport) as client, pytest.raises(KashfError) as caught:
        client.list_datasets()
    assert (caught.value.status, caught.value.error) == (0, "connection") and len(seen) == FAST.attempts


def test_a_proxy_page_keeps_its_status_and_text() -> None:
    transport, _ = _script(httpx.Response(502, text="<html>Bad Gateway</html>"))
    with Client("http://k.test", "t", retry=FAST, transport=transport) as client, pytest.raises(KashfError) as caught:
        client.list_datasets()
    assert (caught.value.status, caught.value.error) == (502, "bad_gateway")
    assert "Bad Gateway" in caught.value.detail


def test_a_fetch_failure_is_not_retried() -> None:
    transport, seen = _script(_error(502, "fetch_failed"))
    with Client("http://k.test", "t", retry=FAST, transport=transport) as client, pytest.raises(KashfError):
        client.list_datasets()
    assert len(seen) == 1


def test_long_lists_are_sent_in_chunks_in_order() -> None:
    sizes: list[int] = []

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sizes.append(len(body["contents"]))
        return httpx.Response(200, json=[{"content": c, "tags": []} for c in body["contents"]])

    with Client("http://k.test", "t", transport=httpx.MockTransport(handle)) as client:
        client.limits.max_items = 10
        texts = [f"text {i}" for i in range(25)]
        assert [a.content for a in client.tag_texts("d", texts)] == texts
        assert client.tag_texts("d", []) == []
    assert sizes == [10, 10, 5]


def test_no_token_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KASHF_TOKEN", raising=False)
    with pytest.raises(KashfError, match="KASHF_TOKEN"):
        Client()


def test_url_and_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KASHF_TOKEN", "from-env")
    monkeypatch.setenv("KASHF_URL", "http://kashf.example:9000/")
    transport, seen = _script(httpx.Response(200, json=[]))
    with Client(transport=transport) as client:
        client.list_datasets()
    assert str(seen[0].url) == "http://kashf.example:9000/api/list_datasets/"
    assert seen[0].headers["authorization"] == "Token from-env"


async def test_the_async_client_retries_the_same_way() -> None:
    answers = [_error(503, "unavailable"), httpx.Response(200, json=TAGGED)]
    seen: list[httpx.Request] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[len(seen) - 1]

    async with AsyncClient("http://k.test", "t", retry=FAST, transport=httpx.MockTransport(handle)) as client:
        answer = await client.tag_texts("d", ["a"])
    assert answer[0].content == "a" and len(seen) == 2
