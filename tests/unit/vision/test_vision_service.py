"""The vision service over a real NATS server, with tiny two-tower ONNX models built by the test.

Images come three ways (loopback URL, upload in the object store, inline bytes); the tiny model's
embedding is an image's mean colour, so which tag each image must get is known exactly.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from modelkit.heads import Head, store_head
from modelkit.onnx.image import ImageEncoder
from modelkit.runtime import Readiness, stop_service
from shared.bus import Bus
from shared.errors import KashfError
from shared.schemas.inference import (
    HeadRef,
    ModelInfoReply,
    ModelInfoRequest,
    ScoredTag,
    TagRef,
    TagReply,
    unpack_vectors,
)
from shared.schemas.media import EmbedImagesReply, EmbedImagesRequest, MediaInput, TagImagesRequest
from shared.settings import VisionServiceSettings
from shared.subjects import BLOBS_BUCKET, IMAGE_MODEL_INFO, VISION_EMBED, VISION_TAG
from tests.fileserver import FileServer
from vision_service.main import setup

RED, GREEN, BLUE, WHITE = (230, 25, 25), (25, 210, 25), (25, 25, 230), (250, 250, 250)
RED_TAG, GREEN_TAG = TagRef(id=11, title="red"), TagRef(id=12, title="سبز")
BLUE_TAG = TagRef(id=13, title="blue")
TAGS = [RED_TAG, GREEN_TAG, BLUE_TAG]
UNKNOWN = [ScoredTag(id=0, title="ناآشنا", probability=1.0)]


def encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def solid(colour: tuple[int, int, int], fmt: str = "JPEG", size: tuple[int, int] = (90, 70)) -> bytes:
    return encode(Image.new("RGB", size, colour), fmt)


def inline(data: bytes) -> MediaInput:
    """Small bytes in the message itself (Base64Bytes fields take base64 when built in Python)."""
    return MediaInput(data=base64.b64encode(data))


Start = Callable[..., Awaitable[Bus]]


@pytest.fixture
async def start_service(nats_url: str, tiny_models_dir: Path) -> AsyncIterator[Start]:
    """Start the vision service in this process (setup as `python -m vision_service` runs it)."""
    running: list[tuple[Bus, Readiness]] = []
    clients: list[Bus] = []

    async def start(model: str = "image/tiny-clip", **overrides: object) -> Bus:
        settings = VisionServiceSettings(  # type: ignore[call-arg]
            nats_url=nats_url, models_dir=tiny_models_dir, image_model=model, device="cpu",
            fetch_allow_hosts="127.0.0.1", **overrides,
        )
        bus = await Bus.connect(nats_url, "vision_service")
        running.append((bus, await setup(settings, bus)))
        client = await Bus.connect(nats_url, "test-client")
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()
    for bus, readiness in running:
        await stop_service(bus, readiness, 10.0)


async def upload(client: Bus, data: bytes) -> str:
    """What the gateway does with a multipart part: put it in the blobs bucket, send the key."""
    key = f"upload-{uuid.uuid4().hex}"
    store = await client.js.object_store(BLOBS_BUCKET)
    await store.put(key, data)
    return key


async def tag(client: Bus, images: list[MediaInput], tags: list[TagRef] = TAGS,
              head: HeadRef | None = None) -> TagReply:
    request = TagImagesRequest(head=head or HeadRef(dataset_id=1), tags=tags, images=images)
    return await client.request(VISION_TAG, request, TagReply)


async def test_urls_uploads_and_inline_bytes_are_tagged_zero_shot_by_title(
        start_service: Start, static_server: FileServer) -> None:
    client = await start_service()
    static_server.files["/red.jpg"] = ("image/jpeg", solid(RED))
    static_server.files["/white.gif"] = ("image/gif", solid(WHITE, "GIF"))
    key = await upload(client, solid(GREEN, "PNG"))
    reply = await tag(client, [
        MediaInput(url=static_server.url("/red.jpg")),
        MediaInput(blob_key=key, name="green.png"),
        inline(solid(BLUE, "WEBP")),
        MediaInput(url=static_server.url("/white.gif")),
    ])
    assert [item.error for item in reply.items] == [None] * 4
    assert [item.tags for item in reply.items] == [
        [ScoredTag(id=11, title="red", probability=1.0)],
        [ScoredTag(id=12, title="سبز", probability=1.0)],  # Persian title, same colour direction
        [ScoredTag(id=13, title="blue", probability=1.0)],
        UNKNOWN,  # white matches none of the titles
    ]
    assert reply.model_id.startswith("tiny-image-clip@")


async def test_a_bad_image_fails_only_its_own_item(start_service: Start, static_server: FileServer) -> None:
    client = await start_service(max_image_pixels=1_000_000)
    static_server.files["/blue.png"] = ("image/png", solid(BLUE, "PNG"))
    page = b"<!doctype html><html><body>" + b"x" * 600 + b"</body></html>"
    static_server.files["/page.html"] = ("text/html", page)
    truncated = encode(Image.fromarray(skdata.astronaut()).resize((200, 200)))
    huge = await upload(client, solid(GREEN, "PNG", size=(1500, 1000)))
    images = [
        MediaInput(url=static_server.url("/blue.png")),
        MediaInput(url=static_server.url("/missing.jpg")),
        MediaInput(url=static_server.url("/page.html")),
        MediaInput(url=f"http://127.0.0.2:{static_server.port}/blue.png"),  # loopback, not allowlisted
        MediaInput(url="http://10.1.2.3/photo.jpg"),
        MediaInput(blob_key="upload-that-expired"),
        MediaInput(blob_key=huge),
        inline(truncated[: len(truncated) // 2]),
        inline(solid(RED)),
    ]
    reply = await tag(client, images)
    codes = [item.error_code for item in reply.items]
    assert codes == [None, "fetch_failed", "unsupported_media", "forbidden_address", "forbidden_address",
                     "not_found", "too_large", "unsupported_media", None]
    assert reply.items[0].tags == [ScoredTag(id=13, title="blue", probability=1.0)]
    assert reply.items[-1].tags == [ScoredTag(id=11, title="red", probability=1.0)]
    for item in reply.items[1:-1]:
        assert item.tags == [] and item.error
    assert "404" in (reply.items[1].error or "")
    assert "KASHF_MAX_IMAGE_PIXELS" in (reply.items[6].error or "")
    assert reply.items[7].error == "not a readable image"


async def test_head_scores_its_tags_and_titles_score_the_rest(
        start_service: Start, tiny_models_dir: Path) -> None:
    client = await start_service()
    encoder = ImageEncoder(tiny_models_dir / "image" / "tiny-clip", device="cpu")
    red_dir = encoder.encode([Image.new("RGB", (60, 60), RED)])[0]
    warm = TagRef(id=21, title="گرم")  # no colour word: only the head can find it
    head = Head(
        model_id=encoder.model_id, version=3, tag_ids=np.array([21], dtype=np.int64),
        weights=(8.0 * red_dir)[None, :].astype(np.float32), bias=np.array([-4.0], dtype=np.float32),
        calibration=np.array([[1.0, 0.0]], dtype=np.float32), thresholds=np.array([0.6], dtype=np.float32),
    )
    await store_head(client.js, 77, head)
    reply = await tag(client, [inline(solid(c)) for c in (RED, BLUE, WHITE)],
                      tags=[warm, BLUE_TAG], head=HeadRef(dataset_id=77, version=3))
    assert [i.tags for i in reply.items] == [
        [ScoredTag(id=21, title="گرم", probability=0.98)],
        [ScoredTag(id=13, title="blue", probability=1.0)],
        UNKNOWN,
    ]
    # An inactive tag (not sent) is never predicted, even though the head knows it.
    reply = await tag(client, [inline(solid(RED))], tags=[BLUE_TAG],
                      head=HeadRef(dataset_id=77, version=3))
    assert reply.items[0].tags == UNKNOWN


async def test_head_of_another_model_is_refused(start_service: Start, tiny_models_dir: Path) -> None:
    client = await start_service()
    head = Head(
        model_id="efficientnet-lite0@0123456789ab", version=1, tag_ids=np.array([11], dtype=np.int64),
        weights=np.ones((1, 16), dtype=np.float32), bias=np.zeros(1, dtype=np.float32),
        calibration=np.array([[1.0, 0.0]], dtype=np.float32), thresholds=np.array([0.5], dtype=np.float32),
    )
    await store_head(client.js, 78, head)
    with pytest.raises(KashfError) as caught:
        await tag(client, [inline(solid(RED))], head=HeadRef(dataset_id=78, version=1))
    assert caught.value.status == 503 and caught.value.error_code == "head_model_mismatch"


async def test_model_info_names_the_model_its_vectors_come_from(
        start_service: Start, tiny_models_dir: Path) -> None:
    client = await start_service()
    info = await client.request(IMAGE_MODEL_INFO, ModelInfoRequest(), ModelInfoReply)
    encoder = ImageEncoder(tiny_models_dir / "image" / "tiny-clip", device="cpu")
    reply = await client.request(VISION_EMBED, EmbedImagesRequest(images=[inline(solid(RED))]), EmbedImagesReply)
    assert (info.model_id, info.dim) == (encoder.model_id, encoder.dim) == (reply.model_id, reply.dim)


async def test_without_a_text_tower_untrained_tags_stay_unknown(start_service: Start) -> None:
    client = await start_service(model="image/tiny")
    reply = await tag(client, [inline(solid(RED))])
    assert reply.items[0].tags == UNKNOWN


async def test_embed_keeps_a_copy_that_re_embeds_to_the_same_vector(
        start_service: Start, static_server: FileServer) -> None:
    client = await start_service()
    photo = encode(Image.fromarray(skdata.chelsea()), "PNG")  # 451x300, ~250 KB
    static_server.files["/chelsea.png"] = ("image/png", photo)
    reply = await client.request(VISION_EMBED, EmbedImagesRequest(images=[
        MediaInput(url=static_server.url("/chelsea.png")), MediaInput(url=static_server.url("/gone.png")),
    ], keep_copy=True), EmbedImagesReply)
    first, gone = reply.items
    assert first.sha256 == hashlib.sha256(photo).hexdigest()  # the dedup key: the original bytes
    assert first.copy_bytes is not None and first.copy_media_type == "image/jpeg"
    assert len(first.copy_bytes) < len(photo) // 4
    # At the model's input scale (the tiny model resizes the shorter side to 64).
    assert Image.open(io.BytesIO(first.copy_bytes)).size == (96, 64)
    assert gone.vector is None and gone.error_code == "fetch_failed" and gone.error_status == 502
    vector = unpack_vectors(first.vector or b"", reply.dim)[0]
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5

    # The trainer's re-embedding: the stored copy sent inline.
    again = await client.request(VISION_EMBED, EmbedImagesRequest(images=[inline(first.copy_bytes)]),
                                 EmbedImagesReply)
    assert again.items[0].copy_bytes is None
    assert float(vector @ unpack_vectors(again.items[0].vector or b"", again.dim)[0]) > 0.999


async def test_concurrent_requests_each_get_their_own_answers(start_service: Start) -> None:
    client = await start_service(max_batch=8, max_wait_ms=20, decode_workers=2)
    colours = [RED, GREEN, BLUE] * 8
    replies = await asyncio.gather(*(tag(client, [inline(solid(c))]) for c in colours))
    by_colour = {RED: RED_TAG.id, GREEN: GREEN_TAG.id, BLUE: BLUE_TAG.id}
    assert [r.items[0].tags[0].id for r in replies] == [by_colour[c] for c in colours]


async def test_more_vectors_than_one_reply_holds_is_413(start_service: Start) -> None:
    client = await start_service()
    images = [MediaInput(url=f"http://127.0.0.1:9/{i}.jpg") for i in range(5000)]
    with pytest.raises(KashfError) as caught:
        await client.request(VISION_EMBED, EmbedImagesRequest(images=images), EmbedImagesReply)
    assert caught.value.status == 413 and "per embed request" in caught.value.detail
