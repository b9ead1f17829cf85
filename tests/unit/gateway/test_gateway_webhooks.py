"""create_webhook, list_webhooks, delete_webhook: the secret shown once, URLs checked, other accounts' 404."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from tests.unit.gateway.harness import Gateway, sql


async def test_a_webhook_is_created_listed_without_its_secret_and_deleted(gw: Gateway) -> None:
    alice = await gw.token("alice")
    await gw.post("/api/create_dataset/", {"dataset": "reviews", "kind": "text"}, alice)

    created = await gw.post("/api/create_webhook/", {"url": "https://hooks.example.com/kashf"}, alice)
    assert created.status_code == 200, created.text
    body = created.json()
    assert set(body) == {"id", "url", "events", "secret"}
    assert body["url"] == "https://hooks.example.com/kashf"
    assert body["events"] == ["training.finished", "training.failed"]
    assert body["secret"].startswith("whsec_") and len(body["secret"]) == 54
    stored = await sql(gw.settings.database_url, "SELECT secret, dataset_id FROM webhook WHERE id=$1", body["id"])
    assert stored[0]["secret"] == body["secret"] and stored[0]["dataset_id"] is None

    one = await gw.post("/api/create_webhook",
                        {"url": "http://hooks.example.com/x", "dataset": "reviews", "events": ["training.failed"]},
                        alice)
    assert one.status_code == 200, one.text
    assert one.json()["secret"] != body["secret"]

    listed = await gw.post("/api/list_webhooks/", {}, alice)
    assert listed.status_code == 200
    rows = listed.json()
    assert [r["id"] for r in rows] == [body["id"], one.json()["id"]]
    assert all("secret" not in r for r in rows)
    assert body["secret"] not in listed.text
    assert rows[0]["dataset"] is None and rows[1]["dataset"] == "reviews"
    assert rows[1]["events"] == ["training.failed"]
    assert rows[0]["last_delivery"] is None
    datetime.fromisoformat(rows[0]["created"])

    deleted = await gw.post("/api/delete_webhook/", {"id": body["id"]}, alice)
    assert deleted.status_code == 200
    assert deleted.json() == {"id": body["id"], "deleted": True}
    assert [r["id"] for r in (await gw.post("/api/list_webhooks/", {}, alice)).json()] == [one.json()["id"]]
    again = await gw.post("/api/delete_webhook/", {"id": body["id"]}, alice)
    assert again.status_code == 404 and again.json()["error"] == "webhook_not_found"


async def test_list_shows_the_last_delivery_of_each_webhook(gw: Gateway) -> None:
    alice = await gw.token("alice")
    hook = (await gw.post("/api/create_webhook/", {"url": "https://hooks.example.com/k"}, alice)).json()
    for state, attempts, status in (("delivered", 1, 200), ("pending", 2, 500)):
        await sql(gw.settings.database_url,
                  "INSERT INTO webhook_delivery (webhook_id, event, payload, state, attempts, last_status, last_error)"
                  " VALUES ($1, 'training.finished', '{}', $2, $3, $4, $5)",
                  hook["id"], state, attempts, status, None if status == 200 else "http status 500")
    last = (await gw.post("/api/list_webhooks/", {}, alice)).json()[0]["last_delivery"]
    assert {k: last[k] for k in ("event", "state", "attempts", "last_status", "last_error")} == {
        "event": "training.finished", "state": "pending", "attempts": 2, "last_status": 500,
        "last_error": "http status 500"}


@pytest.mark.parametrize(("url", "code"), [
    ("ftp://hooks.example.com/x", "invalid_url"),
    ("hooks.example.com/x", "invalid_url"),
    ("http://user:pw@hooks.example.com/x", "invalid_url"),
    ("http:///x", "invalid_url"),
    ("http://10.1.2.3/hook", "forbidden_address"),
    ("http://192.168.0.10:8080/hook", "forbidden_address"),
    ("http://169.254.169.254/latest/meta-data", "forbidden_address"),
    ("http://[::1]/hook", "forbidden_address"),
    ("http://[::ffff:10.0.0.1]/hook", "forbidden_address"),
    ("http://0x0a000001/hook", "forbidden_address"),  # 10.0.0.1 the way inet_aton reads it
    ("http://012.0.0.1/hook", "forbidden_address"),  # octal: 10.0.0.1
    ("http://localhost/hook", "forbidden_address"),
    ("http://api.localhost/hook", "forbidden_address"),
    ("http://93.184.215.14:25/", "forbidden_port"),
])
async def test_urls_the_fetch_rules_refuse_are_400_and_nothing_is_stored(gw: Gateway, url: str, code: str) -> None:
    alice = await gw.token("alice")
    response = await gw.post("/api/create_webhook/", {"url": url}, alice)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == code
    assert await sql(gw.settings.database_url, "SELECT id FROM webhook") == []


async def test_allowlisted_hosts_may_use_any_port(gateway_factory: Callable[..., Any]) -> None:
    async with gateway_factory(fetch_allow_hosts="127.0.0.1,hooks.internal,10.8.0.0/16") as gw:
        alice = await gw.token("alice")
        for url in ("http://127.0.0.1:9000/hook", "http://hooks.internal:8080/hook", "http://10.8.3.4:81/hook",
                    # a name may resolve into an allowlisted network: only the trainer can tell, at delivery
                    "http://svc.cluster.example:8080/hook"):
            response = await gw.post("/api/create_webhook/", {"url": url}, alice)
            assert response.status_code == 200, (url, response.text)
        refused = await gw.post("/api/create_webhook/", {"url": "http://10.9.0.1/hook"}, alice)
        assert refused.status_code == 400 and refused.json()["error"] == "forbidden_address"
    async with gateway_factory(fetch_allow_hosts="") as gw:
        alice = await gw.token("alice")
        response = await gw.post("/api/create_webhook/", {"url": "http://127.0.0.1:9000/hook"}, alice)
        assert response.status_code == 400 and response.json()["error"] == "forbidden_address"
        response = await gw.post("/api/create_webhook/", {"url": "http://hooks.example.com:9000/hook"}, alice)
        assert response.status_code == 400 and "FETCH_ALLOW_PORTS" in response.json()["detail"]


@pytest.mark.parametrize(("body", "status"), [
    ({}, 422),
    ({"url": ""}, 422),
    ({"url": "https://hooks.example.com/" + "a" * 2100}, 422),
    ({"url": "https://hooks.example.com/k", "events": ["model.updated"]}, 422),
    ({"url": "https://hooks.example.com/k", "events": "training.finished"}, 422),
    ({"url": "https://hooks.example.com/k", "events": []}, 400),
    ({"url": 5}, 422),
])
async def test_malformed_bodies(gw: Gateway, body: dict[str, Any], status: int) -> None:
    alice = await gw.token("alice")
    response = await gw.post("/api/create_webhook/", body, alice)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "detail"}


async def test_events_are_kept_once_each_in_the_order_given(gw: Gateway) -> None:
    alice = await gw.token("alice")
    events = ["training.failed", "training.finished", "training.failed"]
    body = (await gw.post("/api/create_webhook/", {"url": "https://h.example.com/", "events": events}, alice)).json()
    assert body["events"] == ["training.failed", "training.finished"]
    stored = await sql(gw.settings.database_url, "SELECT events FROM webhook WHERE id=$1", body["id"])
    assert json.loads(stored[0]["events"]) == ["training.failed", "training.finished"]


async def test_an_account_has_at_most_max_webhooks(gateway_factory: Callable[..., Any]) -> None:
    async with gateway_factory(max_webhooks=2) as gw:
        alice, bob = await gw.token("alice"), await gw.token("bob")
        first = [(await gw.post("/api/create_webhook/", {"url": f"https://h.example.com/{i}"}, alice)).status_code
                 for i in range(3)]
        assert first == [200, 200, 400]
        refused = await gw.post("/api/create_webhook/", {"url": "https://h.example.com/x"}, alice)
        assert refused.json()["error"] == "too_many_webhooks" and "KASHF_MAX_WEBHOOKS" in refused.json()["detail"]
        assert (await gw.post("/api/create_webhook/", {"url": "https://h.example.com/b"}, bob)).status_code == 200
        hook = (await gw.post("/api/list_webhooks/", {}, alice)).json()[0]["id"]
        await gw.post("/api/delete_webhook/", {"id": hook}, alice)
        again = await gw.post("/api/create_webhook/", {"url": "https://h.example.com/y"}, alice)
        assert again.status_code == 200


async def test_another_accounts_webhooks_and_datasets_are_404(gw: Gateway) -> None:
    alice, bob = await gw.token("alice"), await gw.token("bob")
    await gw.post("/api/create_dataset/", {"dataset": "reviews", "kind": "text"}, alice)
    hook = (await gw.post("/api/create_webhook/", {"url": "https://a.example.com/", "dataset": "reviews"},
                          alice)).json()

    foreign = await gw.post("/api/create_webhook/", {"url": "https://b.example.com/", "dataset": "reviews"}, bob)
    assert foreign.status_code == 404 and foreign.json()["error"] == "dataset_not_found"
    assert (await gw.post("/api/list_webhooks/", {}, bob)).json() == []
    response = await gw.post("/api/delete_webhook/", {"id": hook["id"]}, bob)
    assert response.status_code == 404 and "alice" not in response.text
    assert [r["id"] for r in (await gw.post("/api/list_webhooks/", {}, alice)).json()] == [hook["id"]]
    missing = await gw.post("/api/create_webhook/", {"url": "https://a.example.com/", "dataset": "nope"}, alice)
    assert missing.status_code == 404
    assert (await gw.post("/api/list_webhooks/", {}, None)).status_code == 401
