"""Shared pieces of the trainer tests: a deterministic text model on the bus, a seeded dataset, webhooks, polling."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import subprocess
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.bus import Bus
from shared.db.models import Account, DataItem, Dataset, Report, Tag, Webhook, WebhookDelivery
from shared.schemas.inference import EmbedReply, EmbedTextsRequest, ModelInfoReply, ModelInfoRequest
from shared.subjects import EVENTS_STREAM, TEXT_EMBED, TEXT_MODEL_INFO

MODEL_ID = "test-embedder@1"
DIM = 24
GROUPS = ("sport", "food", "music")
SECRET = "whsec_test_secret_0123456789"  # of the webhooks add_webhook makes

Responder = Callable[[], Awaitable[Bus]]  # starts a TextModel on its own connection


def embed_one(text: str) -> np.ndarray:
    """Deterministic: the text's group (its first word) picks a centre, a hash of the text adds noise."""
    group = text.split()[0]
    centre = np.random.default_rng(zlib.crc32(group.encode())).normal(size=DIM)
    noise = np.random.default_rng(zlib.crc32(text.encode())).normal(size=DIM)
    v = 2.0 * centre / np.linalg.norm(centre) + 0.9 * noise / np.sqrt(DIM) + 1.0
    return (v / np.linalg.norm(v)).astype(np.float32)


class TextModel:
    """What the trainer asks of a text service, on the real subjects: embed and model info.

    ``info_model`` and ``embed_model`` differ to play a rolling upgrade (replicas on two models).
    """

    def __init__(self, model_id: str = MODEL_ID) -> None:
        self.info_model = self.embed_model = model_id

    async def embed(self, request: EmbedTextsRequest) -> EmbedReply:
        vectors = np.stack([embed_one(t) for t in request.texts])
        return EmbedReply(model_id=self.embed_model, dim=DIM, vectors=base64.b64encode(vectors.tobytes()))

    async def info(self, _: ModelInfoRequest) -> ModelInfoReply:
        return ModelInfoReply(model_id=self.info_model, dim=DIM)

    async def serve(self, bus: Bus) -> None:
        await bus.serve(TEXT_EMBED, EmbedTextsRequest, self.embed, concurrency=4)
        await bus.serve(TEXT_MODEL_INFO, ModelInfoRequest, self.info, concurrency=4)


async def new_dataset(s: AsyncSession, name: str, title: str, kind: str | None = "text") -> Dataset:
    """A dataset of a new account (random name), flushed so both have ids."""
    account = Account(name=f"acc-{uuid.uuid4().hex[:6]}")
    s.add(account)
    await s.flush()
    dataset = Dataset(account_id=account.id, name=name, title=title, kind=kind)
    s.add(dataset)
    await s.flush()
    return dataset


async def seed(sessions: async_sessionmaker[AsyncSession], per_group: int = 5) -> tuple[int, dict[str, int]]:
    """An account, a text dataset, three tags (music inactive), items and reports with a few explicit negatives."""
    async with sessions.begin() as s:
        dataset = await new_dataset(s, "news", "خبر")
        tags = {g: Tag(dataset_id=dataset.id, title=g, active=g != "music") for g in GROUPS}
        s.add_all(tags.values())
        await s.flush()
        for group in GROUPS:
            for i in range(per_group):
                text = f"{group} sentence number {i}"
                item = DataItem(dataset_id=dataset.id, kind="text", content=text,
                                content_hash=hashlib.sha256(text.encode()).hexdigest())
                s.add(item)
                await s.flush()
                s.add(Report(dataset_id=dataset.id, item_id=item.id, tag_id=tags[group].id, positive=True))
                if i == 0:  # an explicit negative for the next group's tag
                    other = GROUPS[(GROUPS.index(group) + 1) % len(GROUPS)]
                    s.add(Report(dataset_id=dataset.id, item_id=item.id, tag_id=tags[other].id, positive=False))
        return dataset.id, {g: t.id for g, t in tags.items()}


async def wait_state(sessions: async_sessionmaker[AsyncSession], dataset_id: int, states: set[str],
                     timeout_s: float = 30.0) -> Dataset:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        async with sessions() as s:
            dataset = await s.get(Dataset, dataset_id)
            assert dataset is not None
            if dataset.state in states:
                return dataset
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"dataset stayed {dataset.state!r} ({dataset.state_reason})")
        await asyncio.sleep(0.1)


async def wait_settled(bus: Bus, durable: str, timeout_s: float = 20.0) -> None:
    """Until the consumer holds no event: every one acked or terminated, so no further refit can come."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        info = await bus.js.consumer_info(EVENTS_STREAM, durable)
        if info.num_ack_pending == 0 and info.num_pending == 0:
            return
        assert asyncio.get_running_loop().time() < deadline, f"events still held: {info}"
        await asyncio.sleep(0.1)


async def add_webhook(sessions: async_sessionmaker[AsyncSession], url: str, *, dataset: bool = True,
                      events: list[str] | None = None) -> tuple[int, int]:
    """An account with a dataset "news" and a webhook on it (or on every dataset); (dataset id, webhook id)."""
    async with sessions.begin() as s:
        ds = await new_dataset(s, "news", "news")
        hook = Webhook(account_id=ds.account_id, dataset_id=ds.id if dataset else None, url=url, secret=SECRET,
                       events=events or ["training.finished", "training.failed"])
        s.add(hook)
        await s.flush()
        return ds.id, hook.id


async def deliveries(sessions: async_sessionmaker[AsyncSession]) -> list[WebhookDelivery]:
    async with sessions() as s:
        return list((await s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id))).all())


async def until(check: Callable[[], Awaitable[Any]], timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := await check()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
    return value


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def wait_http(port: int, path: str, status: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=2.0) as http:
        while True:
            assert proc.poll() is None, tail(log)
            try:
                if (await http.get(f"http://127.0.0.1:{port}{path}")).status_code == status:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, tail(log)
            await asyncio.sleep(0.1)
