"""Real photos for the end-to-end tests (skimage ships them): views of each and JPEG bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps
from skimage import data


def photos() -> dict[str, np.ndarray]:
    return {"cat": data.chelsea(), "coffee": data.coffee(), "rocket": data.rocket(), "astronaut": data.astronaut()}


def variant(photo: np.ndarray, k: int, size: int = 256) -> Image.Image:
    """A different view of the photo per k: crops at several offsets and scales, some mirrored."""
    img = Image.fromarray(photo).convert("RGB")
    w, h = img.size
    scale = 0.7 + 0.06 * (k % 5)
    cw, ch = int(w * scale), int(h * scale)
    x = int((w - cw) * ((k * 37) % 11) / 10)
    y = int((h - ch) * ((k * 53) % 7) / 6)
    out = img.crop((x, y, x + cw, y + ch)).resize((size, int(size * ch / cw)))
    return ImageOps.mirror(out) if k % 2 else out


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
