"""The text service with the real multilingual-e5-small model (built by `make models`)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from modelkit.heads import Head, store_head
from shared.bus import Bus
from shared.schemas.inference import EmbedReply, EmbedTextsRequest, HeadRef, TagRef, TagReply, TagTextsRequest
from shared.subjects import TEXT_EMBED, TEXT_TAG
from tests.unit.text.texts import (
    BUY,
    BUY_HELD_OUT,
    OTHER,
    PARAPHRASES,
    POOR,
    POOR_HELD_OUT,
    UNRELATED,
    VARIANTS,
)

pytestmark = pytest.mark.models

BUY_TAG = TagRef(id=39, title="توصیه خرید")
POOR_TAG = TagRef(id=40, title="کیفیت پایین")


async def embed(bus: Bus, texts: list[str]) -> EmbedReply:
    return await bus.request(TEXT_EMBED, EmbedTextsRequest(texts=texts), EmbedReply)


async def test_embeddings_are_384_d_unit_vectors(client: Bus) -> None:
    reply = await embed(client, [*BUY, *POOR])
    vectors = reply.array()
    assert reply.model_id.startswith("multilingual-e5-small@")
    assert vectors.shape == (8, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


async def test_concurrent_model_calls_give_what_one_call_at_a_time_gives(client: Bus) -> None:
    # The service runs several model calls at once on CPU (modelkit/onnx/layout.py) on one session.
    texts = [*BUY, *POOR, *OTHER, UNRELATED]
    alone = np.stack([(await embed(client, [t])).array()[0] for t in texts])
    replies = await asyncio.gather(*(embed(client, [t]) for t in texts), *(embed(client, texts) for _ in range(4)))
    # The int8 model scales activations per text (modelbuild/rowquant.py): a text's batch-mates and their
    # padding leave its vector as it is, to float rounding. A call clobbered by another would be far off.
    together = np.stack([r.array()[0] for r in replies[: len(texts)]])
    assert np.min(np.sum(together * alone, axis=1)) > 0.99999
    for batch in replies[len(texts) :]:
        assert np.min(np.sum(batch.array() * alone, axis=1)) > 0.99999


async def test_spelling_variants_embed_as_the_same_text(client: Bus) -> None:
    canonical = (await embed(client, [c for c, _ in VARIANTS])).array()
    variants = (await embed(client, [v for _, v in VARIANTS])).array()
    cosines = np.sum(canonical * variants, axis=1)
    assert np.all(cosines > 0.9999), cosines


async def test_paraphrases_are_closer_than_unrelated_text(client: Bus) -> None:
    for a, b in PARAPHRASES:
        va, vb, vu = (await embed(client, [a, b, UNRELATED])).array()
        assert float(va @ vb) > float(va @ vu) + 0.02, (a, b)


async def test_head_fitted_on_eight_reviews_tags_unseen_reviews(client: Bus) -> None:
    train = [*BUY, *POOR, *OTHER]
    x = (await embed(client, train)).array()
    model_id = (await embed(client, ["x"])).model_id
    weights, bias = [], []
    for positives in (BUY, POOR):
        y = np.array([t in positives for t in train])
        lr = LogisticRegression(C=50.0, max_iter=2000).fit(x, y)
        weights.append(lr.coef_[0])
        bias.append(lr.intercept_[0])
    head = Head(model_id=model_id, version=1, tag_ids=np.array([39, 40], np.int64),
                weights=np.array(weights, np.float32), bias=np.array(bias, np.float32),
                calibration=np.tile(np.array([1.0, 0.0], np.float32), (2, 1)),
                thresholds=np.full(2, 0.4, np.float32))  # the trainer picks thresholds by CV; fixed here
    await store_head(client.js, 21, head)
    request = TagTextsRequest(head=HeadRef(dataset_id=21, version=1), tags=[BUY_TAG, POOR_TAG],
                              texts=[*BUY_HELD_OUT, *POOR_HELD_OUT])
    reply = await client.request(TEXT_TAG, request, TagReply)
    assert [item.tags[0].id for item in reply.items] == [39, 39, 40, 40]
