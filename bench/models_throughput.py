"""Throughput of the built encoders on this machine: TextEncoder at batch 32, ImageEncoder at batch 32.

Run: python bench/models_throughput.py [--models models] [--seconds 5]
Baselines: MODELS.md (2 cores): e5 int8 238 texts/s, fp32 120/s; EfficientNet-Lite0 ONNX 203 images/s.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

from modelkit.onnx.image import ImageEncoder
from modelkit.onnx.session import make_session
from modelkit.onnx.text import TextEncoder

PERSIAN = [
    "این فیلم واقعاً عالی بود و بازیگرها فوق‌العاده بازی کردند و حتماً دوباره می‌بینمش",
    "كيفيت اين گوشي خيلي بد بود، بعد از دو هفته باتري‌اش خراب شد و پس دادمش",
    "قیمت: ۱۲۵٬۰۰۰ تومان — ارسال رایگان برای سفارش‌های بالای ۵۰۰ هزار تومان 😍",
    "رستوران شلوغ بود ولی غذا گرم و خوش‌طعم رسید، پیشنهاد می‌کنم به همه 👍",
]


def rate(call: Callable[[], object], n_per_call: int, seconds: float) -> float:
    call()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        call()
        n += n_per_call
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()

    text_dir = args.models / "text/multilingual-e5-small"
    texts = [PERSIAN[i % len(PERSIAN)] + f" {i}" for i in range(32)]
    enc = TextEncoder(text_dir, device="cpu")
    batch = enc.encode_pre(texts)
    print(f"text batch: {batch['input_ids'].shape[0]} x {batch['input_ids'].shape[1]} tokens")
    for label, file in (("int8", enc.manifest.cpu_file), ("fp32", enc.manifest.gpu_file)):
        enc.session = make_session(text_dir / file, "cpu")
        core = rate(lambda: enc.encode_core(batch), 32, args.seconds)
        full = rate(lambda: enc.encode(texts), 32, args.seconds)
        one = 1000 / rate(lambda: enc.encode(texts[:1]), 1, args.seconds)
        print(f"TextEncoder {label}: model {core:.0f} texts/s, with tokenising {full:.0f} texts/s, "
              f"one text {one:.1f} ms")

    img_enc = ImageEncoder(args.models / "image/efficientnet-lite0", device="cpu")
    names = ("astronaut", "coffee", "chelsea", "rocket")
    photos = [Image.fromarray(np.asarray(getattr(skimage.data, n)())) for n in names]
    images = [photos[i % 4] for i in range(32)]
    pixels = np.stack([img_enc.preprocess(im) for im in images])
    core = rate(lambda: img_enc.encode_core(pixels), 32, args.seconds)
    pre = rate(lambda: [img_enc.preprocess(im) for im in images], 32, args.seconds)
    full = rate(lambda: img_enc.encode(images), 32, args.seconds)
    print(f"ImageEncoder: model {core:.0f} images/s, preprocess {pre:.0f} images/s (1 thread), "
          f"end to end {full:.0f} images/s")


if __name__ == "__main__":
    main()
