"""A text's vector and probabilities do not depend on the texts that share its model call (real model).

The service's batcher merges concurrent requests from different callers into one model call; with one
int8 activation scale per call a text's answer moved with other users' traffic (up to 0.21 in
probability). The built model scales each text on its own (``modelbuild/rowquant.py``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from modelkit.onnx.layout import load_model, model_layout
from modelkit.onnx.text import TextEncoder
from shared.bus import Bus
from shared.schemas.inference import EmbedReply, EmbedTextsRequest
from shared.subjects import TEXT_EMBED
from tests.unit.models.sentences import ENGLISH, PERSIAN
from tests.unit.text.texts import BUY, BUY_HELD_OUT, OTHER, POOR, POOR_HELD_OUT

pytestmark = pytest.mark.models

REAL_TEXT_MODEL = "text/multilingual-e5-small"
TEXTS = [*BUY_HELD_OUT, *POOR_HELD_OUT, *OTHER, "ok"]
# Batch-mates as unlike them as can be: past 512 tokens (truncated, every other row padded to it), one
# character, another script, digits and symbols, repetition.
COMPANY = [
    " ".join([*ENGLISH, *PERSIAN] * 4),
    "!",
    "The hotel room was clean but the wifi kept dropping every evening.",
    "1234567890 $$$ %%% 9876543210",
    "خیلی " * 60,
    *ENGLISH,
]


def _fill_to_32(texts: list[str]) -> list[str]:
    mates = [COMPANY[k % len(COMPANY)] + ("" if k < len(COMPANY) else f" {k}") for k in range(32 - len(texts))]
    return [*texts, *mates]


@pytest.fixture(scope="module")
def encoder(real_models_dir: Path) -> TextEncoder:
    """The encoder as text_service loads it on CPU (its layout, its threads)."""
    layout = model_layout("cpu")
    return load_model(TextEncoder, real_models_dir / REAL_TEXT_MODEL, "cpu", layout)


def test_a_text_embeds_the_same_alone_and_in_a_batch_of_32(encoder: TextEncoder) -> None:
    alone = np.concatenate([encoder.encode([t]) for t in TEXTS])
    batch = _fill_to_32(TEXTS)
    assert len(batch) == 32
    together = encoder.encode(batch)[: len(TEXTS)]
    assert 1 - np.sum(alone * together, axis=1).min() < 1e-5
    # and the same at the other end of the batch, next to other company
    reversed_batch = encoder.encode([*reversed(batch)])[::-1][: len(TEXTS)]
    assert 1 - np.sum(alone * reversed_batch, axis=1).min() < 1e-5

    # A head's probabilities: what an API answer shows.
    head = LogisticRegression(C=10.0, max_iter=1000).fit(
        encoder.encode([*BUY, *POOR]), [1] * len(BUY) + [0] * len(POOR))
    assert np.abs(head.predict_proba(alone) - head.predict_proba(together)).max() < 0.005


async def _embed(bus: Bus, texts: list[str]) -> np.ndarray:
    return (await bus.request(TEXT_EMBED, EmbedTextsRequest(texts=texts), EmbedReply)).array()


async def test_the_service_answers_a_text_the_same_whatever_else_it_batches(client: Bus) -> None:
    alone = np.stack([(await _embed(client, [t]))[0] for t in TEXTS])
    # one request holding other texts, and single-text requests racing other callers' large ones
    together = (await _embed(client, _fill_to_32(TEXTS)))[: len(TEXTS)]
    assert 1 - np.sum(alone * together, axis=1).min() < 1e-5
    replies = await asyncio.gather(*(_embed(client, [t]) for t in TEXTS),
                                   *(_embed(client, COMPANY) for _ in range(2)))
    concurrent = np.stack([r[0] for r in replies[: len(TEXTS)]])
    assert 1 - np.sum(alone * concurrent, axis=1).min() < 1e-5
