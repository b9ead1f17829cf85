"""The built EfficientNet-Lite0: ONNX against PyTorch on real photos, and the ImageEncoder contract."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from modelkit.onnx.image import ImageEncoder
from tests.unit.models.conftest import require_torch

pytestmark = pytest.mark.models

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]
CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {504, 505, 967, 968}  # coffee mug, coffeepot, espresso, cup


def photo(name: str) -> Image.Image:
    arr = np.asarray(getattr(skimage.data, name)())
    return Image.fromarray(arr if arr.ndim == 3 else np.stack([arr] * 3, axis=-1)).convert("RGB")


@pytest.fixture(scope="module")
def encoder(image_model_dir: Path) -> ImageEncoder:
    enc = ImageEncoder(image_model_dir, device="cpu")
    enc.warmup()
    return enc


@pytest.fixture(scope="module")
def pixels(encoder: ImageEncoder) -> np.ndarray:
    return np.stack([encoder.preprocess(photo(n)) for n in PHOTOS])


def _logits(encoder: ImageEncoder, batch: np.ndarray) -> np.ndarray:
    return np.asarray(encoder.session.run(["logits"], {"pixels": batch})[0])


def test_onnx_matches_pytorch_on_photos(encoder: ImageEncoder, pixels: np.ndarray) -> None:
    require_torch()
    import torch

    from modelbuild.export import efficientnet_embedder, load_efficientnet_lite0

    net = efficientnet_embedder(load_efficientnet_lite0())
    with torch.no_grad():
        emb, logits = (t.numpy() for t in net(torch.from_numpy(pixels)))
    ours = encoder.encode_batch(pixels)
    assert (ours * emb).sum(axis=1).min() >= 0.999
    assert (np.argmax(_logits(encoder, pixels), axis=1) == np.argmax(logits, axis=1)).all()


def test_preprocessing_yields_plausible_imagenet_classes(encoder: ImageEncoder) -> None:
    """(x - 127) / 128 on RGB, shorter side 256, centre 224: the cat and the coffee are recognised."""
    batch = np.stack([encoder.preprocess(photo("chelsea")), encoder.preprocess(photo("coffee"))])
    top5 = np.argsort(-_logits(encoder, batch), axis=1)[:, :5]
    assert CAT_CLASSES & set(top5[0].tolist())
    assert COFFEE_CLASSES & set(top5[1].tolist())


def test_encoder_contract(encoder: ImageEncoder) -> None:
    vectors = encoder.encode([photo(n) for n in PHOTOS])
    assert vectors.shape == (len(PHOTOS), 1280) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert re.fullmatch(r"efficientnet-lite0@[0-9a-f]{12}", encoder.model_id)
    assert encoder.dim == 1280 and not encoder.has_text_tower
    assert encoder.encode([]).shape == (0, 1280)
    with pytest.raises(Exception, match="no text tower"):
        encoder.encode_texts(["a cat"])


def test_edited_copies_stay_nearest_to_their_original(encoder: ImageEncoder) -> None:
    originals = [photo(n) for n in PHOTOS]
    base = encoder.encode(originals)
    edits = []
    for im in originals:
        w, h = im.size
        crop = im.crop((w // 10, h // 10, w - w // 10, h - h // 10))
        edits.append(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((w // 2, h // 2)))
    sims = encoder.encode(edits) @ base.T
    assert (np.argmax(sims, axis=1) == np.arange(len(PHOTOS))).all()


def test_odd_modes_and_sizes_preprocess_to_the_model_input(encoder: ImageEncoder) -> None:
    rgb = photo("astronaut")
    odd = [rgb.convert("L"), rgb.convert("RGBA"), rgb.convert("P"), rgb.resize((40, 300)), rgb.resize((3, 2))]
    for im in odd:
        arr = encoder.preprocess(im)
        assert arr.shape == (3, 224, 224) and arr.dtype == np.float32
        assert np.abs(arr).max() <= 1.0
    assert np.isfinite(encoder.encode(odd)).all()
