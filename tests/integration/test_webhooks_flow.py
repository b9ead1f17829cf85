"""A webhook on the real processes: created over HTTP, a training run, the signed event at a local receiver
(the stack's FETCH_ALLOW_HOSTS opens 127.0.0.1), retried once after a 500; NATS permissions as deployed."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.integration.test_text_flow import make_text_dataset, wait_trained
from tests.webhookreceiver import receiver, verify

pytestmark = pytest.mark.integration


async def test_training_finished_reaches_the_receiver_signed(api: httpx.AsyncClient) -> None:
    with receiver([500, 200]) as box:
        dataset = "webhook-reviews"
        await make_text_dataset(api, dataset)
        refused = await api.post("/api/create_webhook/", json={"url": "http://10.20.30.40/hook", "dataset": dataset})
        assert refused.status_code == 400 and refused.json()["error"] == "forbidden_address"
        r = await api.post("/api/create_webhook/", json={"url": box.url, "dataset": dataset})
        assert r.status_code == 200, r.text
        hook = r.json()

        assert (await api.post("/api/train_dataset/", json={"dataset": dataset})).status_code == 200
        info = await wait_trained(api, dataset)
        deadline = time.monotonic() + 60  # the second attempt follows the first after KASHF_WEBHOOK_RETRY_DELAY_S
        while box.answered != [500, 200]:
            assert time.monotonic() < deadline, box.answered
            await asyncio.sleep(0.2)

        for headers, body in box.requests:
            assert verify(hook["secret"], headers["kashf-signature"], body)
        payload = json.loads(box.requests[-1][1])
        assert payload["event"] == "training.finished" and payload["dataset"] == dataset
        assert payload["state"] == "live" and isinstance(payload["version"], int)
        assert payload["evaluation"] | info["evaluation"] == payload["evaluation"]  # dataset_info's, and f1
        assert payload["evaluation"]["f1"] is not None

        async def delivered() -> dict:
            listed = (await api.post("/api/list_webhooks/", json={})).json()
            return next(w for w in listed if w["id"] == hook["id"])["last_delivery"] or {}

        last = await delivered()
        while last.get("state") != "delivered":
            assert time.monotonic() < deadline, last
            await asyncio.sleep(0.2)
            last = await delivered()
        assert (last["attempts"], last["last_status"]) == (2, 200)
        assert (await api.post("/api/delete_webhook/", json={"id": hook["id"]})).json() == {
            "id": hook["id"], "deleted": True}
