"""The image model's vector of a photo does not depend on the images batched with it (fp32, no
activation quantisation; ``python -m bench.batch_invariance`` measures it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelkit.onnx.image import ImageEncoder
from tests.unit.models.test_image_model import PHOTOS, photo

pytestmark = pytest.mark.models


def test_a_photo_embeds_the_same_alone_and_in_a_batch_of_32(image_model_dir: Path) -> None:
    enc = ImageEncoder(image_model_dir, device="cpu", threads=1)
    noise = np.random.default_rng(0).integers(0, 256, (31 - len(PHOTOS), 48, 80, 3), dtype=np.uint8)
    images = [*(photo(n) for n in PHOTOS), *map(Image.fromarray, noise), Image.new("RGB", (300, 200), "white")]
    pixels = np.stack([enc.preprocess(im) for im in images])
    alone = np.concatenate([enc.encode_batch(pixels[i : i + 1]) for i in range(len(PHOTOS))])
    together = enc.encode_batch(pixels)[: len(PHOTOS)]
    assert 1 - np.sum(alone * together, axis=1).min() < 1e-5
