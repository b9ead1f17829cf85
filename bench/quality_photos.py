"""A harder photo track for ``bench.quality``: which of 12 real photos a small, strongly altered view comes from.

The photos ship inside the scikit-image and scikit-learn wheels (nothing downloaded). Each item is one random
view of its photo: a small crop (3-20 % of the area) of any region, shrunk to 48-160 px on the short side
(the model scales it back up), rotated up to 30 degrees, maybe mirrored, brightness, contrast and saturation
jittered, sometimes greyed or blurred. These are synthetic views of a few real photos, not unseen data: the
track separates training methods, it does not predict quality on users' photos. Per view the image model's
embedding and ImageNet logits are kept for the view itself and for six test-time variants (mirrored; the
central 80 %; the four corner 80 %s), cached under ``.kashf/bench/`` keyed by the model file and the generator,
so re-runs are cheap.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".kashf" / "bench"
PER_CLASS = 40
SEED = 17
# The views embedded per item, in this order: the item, its mirror image, its central 80 %, its four corner 80 %s.
TTA = ("plain", "mirror", "centre", "top-left", "top-right", "bottom-left", "bottom-right")


def unit(x: np.ndarray) -> np.ndarray:
    """Rows (along the last axis) scaled to unit length, float32."""
    x = np.asarray(x, dtype=np.float32)
    return np.asarray(x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12), dtype=np.float32)


def _rgb(img: np.ndarray) -> Image.Image:
    return Image.fromarray(img).convert("RGB")


def sources() -> dict[str, Image.Image]:
    """Twelve real photographs from inside the skimage and sklearn wheels: one class each."""
    from skimage import data
    from sklearn.datasets import load_sample_image

    return {
        "cat": _rgb(data.chelsea()), "coffee": _rgb(data.coffee()), "astronaut": _rgb(data.astronaut()),
        "rocket": _rgb(data.rocket()), "motorcycle": _rgb(data.stereo_motorcycle()[0]),
        "palace": _rgb(load_sample_image("china.jpg")), "flower": _rgb(load_sample_image("flower.jpg")),
        "retina": _rgb(data.retina()), "tissue": _rgb(data.immunohistochemistry()),
        "cameraman": _rgb(data.camera()), "brick": _rgb(data.brick()), "coins": _rgb(data.coins()),
    }


def view(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One strongly altered view: a small crop anywhere, shrunk, rotated, maybe mirrored, jittered, greyed, blurred."""
    w, h = img.size
    area = rng.uniform(0.03, 0.20) * w * h
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, round(np.sqrt(area * ratio))), min(h, round(np.sqrt(area / ratio)))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = img.crop((left, top, left + cw, top + ch))
    short = int(rng.integers(48, 161))
    if min(out.size) > short:
        scale = short / min(out.size)
        out = out.resize((max(1, round(out.width * scale)), max(1, round(out.height * scale))),
                         Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    out = out.rotate(float(rng.uniform(-30, 30)), resample=Image.Resampling.BILINEAR)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhance(out).enhance(float(rng.uniform(0.5, 1.5)))
    if rng.random() < 0.2:
        out = ImageOps.grayscale(out).convert("RGB")
    if rng.random() < 0.3:
        out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.0, 3.0))))
    return out


def tta_views(img: Image.Image) -> list[Image.Image]:
    """The view itself, its mirror image, its central 80 % and its four corner 80 %s (in ``TTA`` order)."""
    w, h = img.size
    cw, ch = round(w * 0.8), round(h * 0.8)
    dw, dh = (w - cw) // 2, (h - ch) // 2
    corners = [(0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)]
    return [img, ImageOps.mirror(img), img.crop((dw, dh, dw + cw, dh + ch)),
            *(img.crop((x, y, x + cw, y + ch)) for x, y in corners)]


@dataclass(frozen=True)
class PhotoTrack:
    y: np.ndarray  # (items,) class index
    embeddings: np.ndarray  # (len(TTA), items, dim) unit rows: the model's embedding of each test-time view
    logits: np.ndarray  # (len(TTA), items, 1000) the model's ImageNet logits of each view
    model_id: str
    names: list[str]

    def embedding(self, views: tuple[str, ...] = ("plain",)) -> np.ndarray:
        """Unit mean of the named views' unit embeddings (test-time augmentation when more than one)."""
        return unit(self.embeddings[[TTA.index(v) for v in views]].mean(0))


def closeness(t: PhotoTrack) -> str:
    """Median cosines: a view to its mirror image and to its centre, two views of one photo, of two photos."""
    e = t.embeddings
    sims = e[0] @ e[0].T
    same = t.y[:, None] == t.y[None, :]
    other = ~same
    np.fill_diagonal(same, False)
    return (f"median cosine of a view and its mirror image {np.median((e[0] * e[1]).sum(1)):.2f}, its central 80 % "
            f"{np.median((e[0] * e[2]).sum(1)):.2f}; of two views of one photo {np.median(sims[same]):.2f}, "
            f"of two photos {np.median(sims[other]):.2f}")


def _key(model_file: Path, per_class: int, seed: int) -> str:
    code = inspect.getsource(sources) + inspect.getsource(view) + inspect.getsource(tta_views)
    digest = hashlib.sha256(model_file.read_bytes())
    digest.update(f"{per_class}:{seed}:{code}".encode())
    return digest.hexdigest()[:16]


def photo_track(model_dir: Path, per_class: int = PER_CLASS, seed: int = SEED, cache: Path = CACHE) -> PhotoTrack:
    """The track's labels, embeddings and logits; computed once per model file and generator, then kept in
    ``cache``."""
    from modelkit.onnx.image import ImageEncoder

    encoder = ImageEncoder(model_dir, device="cpu")
    path = cache / f"quality_photos-{_key(model_dir / encoder.manifest.cpu_file, per_class, seed)}.npz"
    photos = sources()
    if not path.exists():
        rng = np.random.default_rng(seed)
        items = [view(img, rng) for img in photos.values() for _ in range(per_class)]
        pixels = np.stack([encoder.preprocess(v) for item in items for v in tta_views(item)])
        names = [o.name for o in encoder.session.get_outputs()]
        parts = [encoder.session.run(None, {encoder.session.get_inputs()[0].name: pixels[i:i + 32]})
                 for i in range(0, len(pixels), 32)]
        emb, logits = (np.concatenate([p[names.index(o)] for p in parts]) for o in ("embedding", "logits"))
        shape = (len(items), len(TTA))
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, embeddings=emb.reshape(*shape, -1).transpose(1, 0, 2),
                 logits=logits.reshape(*shape, -1).transpose(1, 0, 2))
    cached = np.load(path)
    y = np.repeat(np.arange(len(photos)), per_class)
    return PhotoTrack(y, unit(cached["embeddings"]), cached["logits"].astype(np.float32),
                      encoder.model_id, list(photos))
