"""Tag calls held by a model replica that dies are answered by another one within seconds (idempotent bus
requests), instead of waiting the subject's whole timeout for a 504: the gateway's very first calls too, before
it has heard from the subject's responders."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from pydantic import BaseModel

from shared.bus import Bus, synced
from shared.bus.requester import SILENCE_S
from shared.schemas.inference import ItemResult, ScoredTag, TagReply, TagTextsRequest
from shared.schemas.media import TagImagesRequest, TagVideoReply, TagVideoRequest, VideoFrame
from shared.subjects import TEXT_TAG, VIDEO_TAG, VISION_TAG, Subject
from tests.unit.gateway.harness import Gateway

MARGIN_S = 2.0
UNKNOWN = [ScoredTag(id=0, title="ناآشنا", probability=1.0)]


async def _text(request: TagTextsRequest) -> TagReply:
    return TagReply(model_id="m", items=[ItemResult(tags=UNKNOWN) for _ in request.texts])


async def _images(request: TagImagesRequest) -> TagReply:
    return TagReply(model_id="m", items=[ItemResult(tags=UNKNOWN) for _ in request.images])


async def _video(request: TagVideoRequest) -> TagVideoReply:
    return TagVideoReply(model_id="m", frames=[VideoFrame(frame=0, time="0:00:00", tags=UNKNOWN)])


# subject, request type, the model's answer, dataset kind, path, body
CASES: dict[str, tuple[Subject, type[BaseModel], Callable[[Any], Any], str, str, dict[str, Any]]] = {
    "text": (TEXT_TAG, TagTextsRequest, _text, "text", "/api/tag_texts/", {"contents": ["سلام"]}),
    "image": (VISION_TAG, TagImagesRequest, _images, "image", "/api/tag_images/",
              {"image_urls": ["https://example.org/a.jpg"]}),
    "video": (VIDEO_TAG, TagVideoRequest, _video, "image", "/api/tag_video_frames/",
              {"every_ms": 500, "video_urls": ["https://example.org/a.mp4"]}),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_tag_calls_held_by_a_dying_replica_are_answered_by_another(
    gw: Gateway, nats_url: str, case: str,
) -> None:
    subject, request_type, answer, kind, path, extra = CASES[case]
    token = await gw.token("acme")
    await gw.post("/api/create_dataset/", {"dataset": "d", "kind": kind}, token)
    await gw.post("/api/create_tag/", {"dataset": "d", "title": "t"}, token)
    served: list[BaseModel] = []

    async def live_model(request: Any) -> BaseModel:
        served.append(request)
        reply: BaseModel = await answer(request)
        return reply

    live = await Bus.connect(nats_url, "test-live-model")
    await live.serve(subject, request_type, live_model, concurrency=64)
    body = {"dataset": "d", **extra}
    taken: list[Msg] = []
    dead = await nats.connect(nats_url)

    async def swallow(msg: Msg) -> None:
        taken.append(msg)

    await dead.subscribe(subject.name, queue=subject.queue, cb=swallow)
    await synced(dead)

    async def call() -> tuple[int, float]:
        started = time.perf_counter()
        response = await gw.post(path, body, token)
        return response.status_code, time.perf_counter() - started

    calls = [asyncio.create_task(call()) for _ in range(16)]
    for _ in range(1000):
        if len(taken) + len(served) == 16:  # every model request reached one of the two replicas
            break
        await asyncio.sleep(0.01)
    assert taken, "the queue group never picked the dying replica (odds 1 in 2**16)"
    await dead.close()  # it dies holding them
    results = await asyncio.gather(*calls)
    assert [status for status, _ in results] == [200] * 16
    # Was the subject's 30-180 s, then 504 (for the first calls, until 2026-12: nothing had told the gateway
    # that the subject's responders send heartbeats).
    assert max(took for _, took in results) < SILENCE_S + MARGIN_S < subject.timeout_s / 3
    assert len(served) == 16  # the held ones reached the live replica, once each
    await live.close(1)
