"""Tokens are looked up once per replica and TTL, also when a burst of requests brings a token at once."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event

from tests.unit.gateway.harness import Gateway


async def test_a_burst_with_a_new_token_looks_it_up_once(gw: Gateway) -> None:
    token = await gw.token("acme")
    statements: list[str] = []

    def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(gw.state.engine.sync_engine, "before_cursor_execute", on_execute)
    responses = await asyncio.gather(*(gw.post("/api/list_datasets/", {}, token) for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert len([s for s in statements if "token_hash" in s]) == 1


async def test_a_burst_with_a_wrong_token_is_refused_for_every_request(gw: Gateway) -> None:
    responses = await asyncio.gather(*(gw.post("/api/list_datasets/", {}, "not-a-token") for _ in range(5)))
    assert [r.status_code for r in responses] == [401] * 5
    assert all(r.json()["error"] == "unauthorized" for r in responses)
