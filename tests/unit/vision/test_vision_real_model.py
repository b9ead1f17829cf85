"""The vision service with the real EfficientNet-Lite0 model on real photographs (skimage, sklearn).

A head fitted on a few uploaded photos finds its tag in unseen crops and flips fetched by URL; the
bounded copy kept for a report re-embeds close to the original.
"""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data as skdata
from sklearn.datasets import load_sample_images
from sklearn.linear_model import LogisticRegression

from modelkit.heads import Head, store_head
from modelkit.runtime import Readiness, stop_service
from shared.bus import Bus
from shared.schemas.inference import HeadRef, TagRef, TagReply, unpack_vectors
from shared.schemas.media import EmbedImagesReply, EmbedImagesRequest, MediaInput, TagImagesRequest
from shared.settings import VisionServiceSettings
from shared.subjects import BLOBS_BUCKET, VISION_EMBED, VISION_TAG
from tests.fileserver import FileServer
from tests.unit.vision.conftest import REAL_IMAGE_MODEL
from vision_service.main import setup

pytestmark = pytest.mark.models

CAT = TagRef(id=501, title="گربه")


def photos() -> dict[str, Image.Image]:
    out = {name: Image.fromarray(getattr(skdata, name)()).convert("RGB")
           for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")}
    china, flower = load_sample_images().images
    out["china"], out["flower"] = Image.fromarray(china), Image.fromarray(flower)
    return out


def crop(img: Image.Image, fx: float, fy: float, frac: float) -> Image.Image:
    """A crop of ``frac`` of each side, its corner at (fx, fy) of the free room."""
    w, h = img.size
    cw, ch = int(w * frac), int(h * frac)
    left, top = int((w - cw) * fx), int((h - ch) * fy)
    return img.crop((left, top, left + cw, top + ch))


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture
async def client(nats_url: str, real_models_dir: Path) -> AsyncIterator[Bus]:
    settings = VisionServiceSettings(  # type: ignore[call-arg]
        nats_url=nats_url, models_dir=real_models_dir, image_model=REAL_IMAGE_MODEL, device="cpu",
        fetch_allow_hosts="127.0.0.1",
    )
    bus = await Bus.connect(nats_url, "vision_service")
    readiness: Readiness = await setup(settings, bus)
    client = await Bus.connect(nats_url, "test-client")
    yield client
    await client.close()
    await stop_service(bus, readiness, 10.0)


async def embed(client: Bus, images: list[MediaInput], keep_copy: bool = False) -> EmbedImagesReply:
    return await client.request(VISION_EMBED, EmbedImagesRequest(images=images, keep_copy=keep_copy),
                                EmbedImagesReply)


def vectors(reply: EmbedImagesReply) -> np.ndarray:
    assert all(item.error is None for item in reply.items), [item.error for item in reply.items]
    return np.vstack([unpack_vectors(item.vector or b"", reply.dim) for item in reply.items])


async def test_a_head_fitted_on_uploads_finds_the_cat_in_unseen_variants(
        client: Bus, static_server: FileServer) -> None:
    pics = photos()
    train: list[tuple[Image.Image, bool]] = []
    for name, img in pics.items():
        for fx, fy in ((0.0, 0.0), (1.0, 1.0), (0.5, 0.5)):
            train.append((crop(img, fx, fy, 0.7), name == "chelsea"))
    # Reports are uploads here: the gateway puts each part in the blobs bucket and sends its key.
    store = await client.js.object_store(BLOBS_BUCKET)
    keys = []
    for img, _ in train:
        keys.append(f"upload-{uuid.uuid4().hex}")
        await store.put(keys[-1], jpeg(img))
    reply = await embed(client, [MediaInput(blob_key=k) for k in keys])
    x, y = vectors(reply), np.array([positive for _, positive in train])
    fit = LogisticRegression(C=10.0, max_iter=1000).fit(x, y)
    head = Head(
        model_id=reply.model_id, version=1, tag_ids=np.array([CAT.id], dtype=np.int64),
        weights=fit.coef_.astype(np.float32), bias=fit.intercept_.astype(np.float32),
        calibration=np.array([[1.0, 0.0]], dtype=np.float32), thresholds=np.array([0.5], dtype=np.float32),
    )
    await store_head(client.js, 901, head)

    # Unseen: mirrored crops at other positions, fetched by URL.
    urls, truth = [], []
    for name, img in pics.items():
        for i, (fx, fy) in enumerate(((1.0, 0.0), (0.0, 1.0))):
            path = f"/unseen/{name}-{i}.jpg"
            static_server.files[path] = ("image/jpeg", jpeg(ImageOps.mirror(crop(img, fx, fy, 0.8))))
            urls.append(static_server.url(path))
            truth.append(name == "chelsea")
    tagged = await client.request(VISION_TAG, TagImagesRequest(
        head=HeadRef(dataset_id=901, version=1), tags=[CAT], images=[MediaInput(url=u) for u in urls],
    ), TagReply)
    found = [item.tags[0].id == CAT.id for item in tagged.items]
    assert found == truth


async def test_the_kept_copy_re_embeds_close_to_the_original(client: Bus) -> None:
    originals = [jpeg(img, 95) for img in photos().values()]
    first = await embed(client, [MediaInput(data=base64.b64encode(b)) for b in originals], keep_copy=True)
    copies = [item.copy_bytes or b"" for item in first.items]
    assert all(len(c) < 80_000 for c in copies)
    again = await embed(client, [MediaInput(data=base64.b64encode(c)) for c in copies])
    cosines = np.sum(vectors(first) * vectors(again), axis=1)
    assert cosines.min() > 0.98, cosines


async def test_a_large_jpeg_decoded_at_reduced_scale_embeds_like_a_full_decode(client: Bus) -> None:
    photo = photos()["coffee"]
    big = photo.resize((photo.width * 4, photo.height * 4), Image.Resampling.BICUBIC)  # 2400x1600
    reply = await embed(client, [MediaInput(data=base64.b64encode(jpeg(big, 92))),
                                 MediaInput(data=base64.b64encode(jpeg(photo, 92)))])
    drafted, small = vectors(reply)
    assert float(drafted @ small) > 0.99
