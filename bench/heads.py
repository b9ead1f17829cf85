"""Head quality: our fit against a plain ``LogisticRegression()`` on the same embeddings, held-out items.

Two scorings per examples-per-tag n: (a) top-1, the first returned tag is right (unknown = wrong), vs plain
LR's argmax; (b) multi-label F1 (micro and macro over tags) of the returned set vs plain one-vs-rest LR at
0.5 and vs LR's argmax as a one-tag set. Text: e5 on ``tests/unit/trainer/reviews.py``; images: EfficientNet
on crops/flips/jitter of the photos shipped by scikit-image and scikit-learn. Run: ``python -m bench.heads``.

``--track load``: what a model service pays for a head it does not hold (``HeadCache``): a cold load from the
object store of a private nats-server against a warm hit (the baseline), for a text head (50 tags x 384) and an
image head (200 tags x 1280) of random weights, and the event loop's longest stall meanwhile, with the parse in
a worker thread (as shipped) and on the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from sklearn.linear_model import LogisticRegression

from devtools import servers
from modelkit.heads import UNKNOWN_TAG_ID, Head, HeadCache, object_name, store_head, tag_vectors
from shared import subjects
from shared.bus import Bus, ensure_streams
from shared.bus.objects import read_object
from shared.schemas.inference import HeadRef, TagRef
from trainer.fitting import FitConfig, Report, fit_head

REPO = Path(__file__).resolve().parent.parent
TEXT_MODEL = "text/multilingual-e5-small"
IMAGE_MODEL = "image/efficientnet-lite0"
TEXT_N = (2, 4, 8, 16, 32)
IMAGE_N = (2, 4, 6, 10)
DEV_SEEDS = range(0, 20)  # for choosing settings
REPORT_SEEDS = range(1000, 1040)  # for the figures: splits never used to choose anything


@dataclass(frozen=True)
class Track:
    name: str
    x: np.ndarray  # (items, dim) unit rows
    y: np.ndarray  # (items,) class index
    unrelated: np.ndarray  # (m, dim) items of no class
    model_id: str


@dataclass(frozen=True)
class Scores:
    """Means over splits: top-1 (a), micro and macro F1 of the returned set (b), unknown rates."""

    top1: float
    micro_f1: float
    macro_f1: float
    unknown: float = float("nan")  # share of held-out tagged items answered unknown
    unrelated_unknown: float = float("nan")  # share of unrelated items answered unknown


def set_f1(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Micro and macro F1 of boolean (items, tags) predictions; a tag never true nor predicted counts 0."""
    tp = (pred & truth).sum(0)
    fp = (pred & ~truth).sum(0)
    fn = (~pred & truth).sum(0)
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
    per_tag = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    return float(micro), float(per_tag.mean())


def split(y: np.ndarray, per_tag: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_tag`` random training rows of each class; every other row is held out."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    test: list[int] = []
    for t in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == t))
        train += rows[:per_tag].tolist()
        test += rows[per_tag:].tolist()
    return np.array(train), np.array(test)


def ours(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
         unrelated: np.ndarray, n_tags: int, config: FitConfig | None = None) -> Scores:
    """Fit as the trainer does (one positive report per item) and tag as the services do."""
    refs = [TagRef(id=t + 1, title=f"tag {t}") for t in range(n_tags)]
    reports = [Report(row, int(t) + 1, True) for row, t in enumerate(y_train)]
    head = fit_head(x_train, reports, [r.id for r in refs], config).head("m", 1)
    rows = tag_vectors(head, np.concatenate([x_test, unrelated]), refs)
    tagged, other = rows[:len(x_test)], rows[len(x_test):]
    pred = np.zeros((len(x_test), n_tags), dtype=bool)
    for i, row in enumerate(tagged):
        for tag in row:
            if tag.id != UNKNOWN_TAG_ID:
                pred[i, tag.id - 1] = True
    truth = np.eye(n_tags, dtype=bool)[y_test]
    micro, macro = set_f1(pred, truth)
    first = np.array([row[0].id - 1 for row in tagged])
    return Scores(top1=float(np.mean(first == y_test)), micro_f1=micro, macro_f1=macro,
                  unknown=float(np.mean([row[0].id == UNKNOWN_TAG_ID for row in tagged])),
                  unrelated_unknown=float(np.mean([row[0].id == UNKNOWN_TAG_ID for row in other]))
                  if len(other) else float("nan"))


def plain(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
          n_tags: int) -> dict[str, Scores]:
    """Plain ``LogisticRegression()`` (defaults): one-vs-rest at 0.5, its argmax, and multinomial argmax."""
    truth = np.eye(n_tags, dtype=bool)[y_test]
    ovr = np.stack([LogisticRegression().fit(x_train, y_train == t).predict_proba(x_test)[:, 1]
                    for t in range(n_tags)], axis=1)
    multi = LogisticRegression().fit(x_train, y_train).predict(x_test)
    out: dict[str, Scores] = {}
    micro, macro = set_f1(ovr >= 0.5, truth)
    top = np.where((ovr >= 0.5).any(1), ovr.argmax(1), -1)
    out["ovr@0.5"] = Scores(float(np.mean(top == y_test)), micro, macro)
    for name, arg in (("ovr argmax", ovr.argmax(1)), ("multinomial", multi)):
        micro, macro = set_f1(np.eye(n_tags, dtype=bool)[arg], truth)
        out[name] = Scores(float(np.mean(arg == y_test)), micro, macro)
    return out


def _mean(scores: Sequence[Scores]) -> Scores:
    return Scores(*(float(np.mean([getattr(s, f) for s in scores])) for f in Scores.__dataclass_fields__))


def per_split(track: Track, per_tag: int, seeds: Sequence[int],
              config: FitConfig | None = None) -> tuple[list[Scores], dict[str, list[Scores]]]:
    """Per split (one per seed): our scores and each plain baseline's."""
    n_tags = int(track.y.max()) + 1
    got: list[Scores] = []
    base: dict[str, list[Scores]] = {}
    for seed in seeds:
        train, test = split(track.y, per_tag, seed)
        args = (track.x[train], track.y[train], track.x[test], track.y[test])
        got.append(ours(*args, track.unrelated, n_tags, config))
        for name, s in plain(*args, n_tags).items():
            base.setdefault(name, []).append(s)
    return got, base


def evaluate(track: Track, per_tag: int, seeds: Sequence[int],
             config: FitConfig | None = None) -> tuple[Scores, dict[str, Scores]]:
    """Mean over the seeds' splits of (ours, plain baselines by name)."""
    got, base = per_split(track, per_tag, seeds, config)
    return _mean(got), {name: _mean(s) for name, s in base.items()}


def win(got: Sequence[Scores], base: dict[str, list[Scores]], field: str, names: Sequence[str]) -> tuple[float, float]:
    """Mean and standard error over splits of ours minus the best (by mean) of the named baselines."""
    best = max(names, key=lambda n: float(np.mean([getattr(s, field) for s in base[n]])))
    diff = np.array([getattr(o, field) - getattr(b, field) for o, b in zip(got, base[best], strict=True)])
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")


def text_track(models_dir: Path) -> Track:
    from modelkit.onnx.text import TextEncoder
    from tests.unit.trainer.reviews import TAGS, UNRELATED

    encoder = TextEncoder(models_dir / TEXT_MODEL, device="cpu")
    x = encoder.encode([t for group in TAGS.values() for t in group])
    y = np.array([i for i, group in enumerate(TAGS.values()) for _ in group])
    return Track("text", x, y, encoder.encode(UNRELATED), encoder.model_id)


def _rgb(img: np.ndarray) -> Image.Image:
    return Image.fromarray(img).convert("RGB")


def photo_classes() -> dict[str, list[Image.Image]]:
    """Classes of real photos shipped inside the skimage and sklearn wheels (no download)."""
    from skimage import data
    from sklearn.datasets import load_sample_image

    return {
        "cat": [_rgb(data.chelsea())],
        "coffee": [_rgb(data.coffee())],
        "person": [_rgb(data.astronaut()), _rgb(data.camera())],
        "motorcycle": [_rgb(data.stereo_motorcycle()[0]), _rgb(data.stereo_motorcycle()[1])],
        "building": [_rgb(load_sample_image("china.jpg"))],
        "flower": [_rgb(load_sample_image("flower.jpg"))],
    }


def unrelated_photos() -> list[Image.Image]:
    from skimage import data

    return [_rgb(data.rocket()), _rgb(data.hubble_deep_field()), _rgb(data.brick()), _rgb(data.grass()),
            _rgb(data.gravel()), _rgb(data.moon()), _rgb(data.coins()), _rgb(data.immunohistochemistry())]


def variant(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random crop (15-70 % of the area), maybe mirrored, rotated, colour-jittered, greyed or blurred."""
    w, h = img.size
    area = rng.uniform(0.15, 0.7) * w * h
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, round(np.sqrt(area * ratio))), min(h, round(np.sqrt(area / ratio)))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = img.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    out = out.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhance(out).enhance(float(rng.uniform(0.6, 1.4)))
    if rng.random() < 0.15:
        out = ImageOps.grayscale(out).convert("RGB")
    if rng.random() < 0.2:
        out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.0, 2.5))))
    return out


def image_track(models_dir: Path, per_class: int = 40) -> Track:
    from modelkit.onnx.image import ImageEncoder

    encoder = ImageEncoder(models_dir / IMAGE_MODEL, device="cpu")
    rng = np.random.default_rng(42)
    images: list[Image.Image] = []
    labels: list[int] = []
    for c, sources in enumerate(photo_classes().values()):
        for i in range(per_class):
            images.append(variant(sources[i % len(sources)], rng))
            labels.append(c)
    others = [variant(img, rng) for img in unrelated_photos() for _ in range(2)]
    return Track("image", encoder.encode(images), np.array(labels), encoder.encode(others), encoder.model_id)


def print_table(track: Track, ns: Sequence[int], seeds: Sequence[int], config: FitConfig | None = None,
                out: Callable[[str], None] = print) -> None:
    n_tags = int(track.y.max()) + 1
    out(f"\n{track.name}: {n_tags} tags x {len(track.y) // n_tags} items, {track.model_id}; "
        f"mean of {len(seeds)} splits (seeds {seeds[0]}..{seeds[-1]}); win = ours - best plain LR, +- 1 s.e.")
    out(f"{'n/tag':>5} | {'(a) top-1':^34} | {'(b) micro-F1':^42} | {'(b) macro-F1':^42} | {'unknown':^11}")
    out(f"{'':>5} | {'ours':>6} {'LR ovr':>6} {'LR mn':>6} {'win':>13} | {'ours':>6} {'@0.5':>6} {'ovr-am':>6} "
        f"{'mn-am':>6} {'win':>13} | {'ours':>6} {'@0.5':>6} {'ovr-am':>6} {'mn-am':>6} {'win':>13} | "
        f"{'test':>5} {'unrel':>5}")
    argmaxes, every = ("ovr argmax", "multinomial"), ("ovr@0.5", "ovr argmax", "multinomial")
    for n in ns:
        start = time.perf_counter()
        got, base = per_split(track, n, seeds, config)
        o = _mean(got)
        p05, am, mn = (_mean(base[k]) for k in every)
        wins = [win(got, base, "top1", argmaxes), win(got, base, "micro_f1", every), win(got, base, "macro_f1", every)]
        w = [f"{m:+.3f}+-{se:.3f}" for m, se in wins]
        out(f"{n:>5} | {o.top1:6.3f} {am.top1:6.3f} {mn.top1:6.3f} {w[0]:>13} | {o.micro_f1:6.3f} "
            f"{p05.micro_f1:6.3f} {am.micro_f1:6.3f} {mn.micro_f1:6.3f} {w[1]:>13} | {o.macro_f1:6.3f} "
            f"{p05.macro_f1:6.3f} {am.macro_f1:6.3f} {mn.macro_f1:6.3f} {w[2]:>13} | "
            f"{o.unknown:5.3f} {o.unrelated_unknown:5.3f}   ({time.perf_counter() - start:.0f} s)")


def random_head(dataset_id: int, tags: int, dim: int) -> Head:
    rng = np.random.default_rng(dataset_id)
    return Head(model_id="bench@1", version=1, tag_ids=np.arange(1, tags + 1, dtype=np.int64),
                weights=rng.standard_normal((tags, dim)).astype(np.float32), bias=np.zeros(tags, np.float32),
                calibration=np.tile(np.array([1.0, 0.0], np.float32), (tags, 1)),
                thresholds=np.full(tags, 0.5, np.float32))


async def _timed_loads(ids: Sequence[int], load: Callable[[int], Awaitable[object]]) -> tuple[list[float], float]:
    """Milliseconds per load (one after another), and the 99th percentile of the event loop's stalls meanwhile
    (ms): how late a 1 ms sleep woke up, sampled all along."""
    late: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            late.append((time.perf_counter() - start - 0.001) * 1000)

    tick = asyncio.create_task(ticker())
    samples = []
    for dataset_id in ids:
        start = time.perf_counter()
        await load(dataset_id)
        samples.append((time.perf_counter() - start) * 1000)
    done.set()
    await tick
    return samples, float(np.percentile(late or [0.0], 99))  # warm hits never yield to the loop


async def _load_row(bus: Bus, name: str, tags: int, dim: int, ids: Sequence[int]) -> str:
    blob = random_head(ids[0], tags, dim).to_bytes()
    for dataset_id in ids:
        await store_head(bus.js, dataset_id, random_head(dataset_id, tags, dim))
    await asyncio.to_thread(time.sleep, 0)  # the worker threads exist before the first load is timed
    cache = HeadCache(bus.js, max_entries=len(ids))

    async def cached(dataset_id: int) -> Head | None:
        return await cache.get(HeadRef(dataset_id=dataset_id, version=1))

    cold, stall = await _timed_loads(ids, cached)
    warm, _ = await _timed_loads(ids, cached)
    store = await bus.js.object_store(subjects.HEADS_BUCKET)

    async def on_loop(dataset_id: int) -> Head:  # the parse where it was before: on the event loop
        return Head.from_bytes(await read_object(bus.js, store, subjects.HEADS_BUCKET, object_name(dataset_id, 1)))

    _, loop_stall = await _timed_loads(ids, on_loop)
    parse = []
    for _ in range(50):
        start = time.perf_counter()
        Head.from_bytes(blob)
        parse.append((time.perf_counter() - start) * 1000)
    (w50, w99), (c50, c99) = np.percentile(warm, [50, 99]), np.percentile(cold, [50, 99])
    return (f"{name:<18} {len(blob) / 1024:8.0f} {f'{w50:.4f} / {w99:.4f}':>24} {f'{c50:.2f} / {c99:.2f}':>14} "
            f"{c50 / w50:7.0f} {np.median(parse):9.2f} {stall:13.1f} {loop_stall:8.1f}")


async def print_loads(per_size: int = 200) -> None:
    """Cold loads against warm hits of a HeadCache (see the module's docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = servers.start_nats(Path(tmp) / "nats")
        bus = await Bus.connect(url, "bench-heads")
        try:
            await ensure_streams(bus.js)
            print(f"\nhead loads, {per_size} heads per size, one after another (ms); baseline: a warm hit; x: cold"
                  " p50 over warm p50;\nstall: the event loop's delays during the cold loads, 99th percentile,"
                  " with the parse in a worker thread (shipped) and on the loop")
            print(f"{'head':<18} {'blob KiB':>8} {'warm p50/p99 (baseline)':>24} {'cold p50/p99':>14} "
                  f"{'x p50':>7} {'parse p50':>9} {'stall: thread':>13} {'on loop':>8}")
            print(await _load_row(bus, "text, 50 x 384", 50, 384, range(per_size)))
            print(await _load_row(bus, "image, 200 x 1280", 200, 1280, range(10**6, 10**6 + per_size)))
        finally:
            await bus.close(2)
            proc.terminate()
            proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--track", choices=("text", "image", "both", "load"), default="both")
    parser.add_argument("--seeds", choices=("report", "dev"), default="report",
                        help="report: the held-back splits for the figures; dev: the splits used for tuning")
    parser.add_argument("--splits", type=int, default=None, help="use only the first N splits")
    args = parser.parse_args()
    seeds = list(REPORT_SEEDS if args.seeds == "report" else DEV_SEEDS)[:args.splits]
    if args.track == "load":
        asyncio.run(print_loads())
        return
    if args.track in ("text", "both"):
        print_table(text_track(args.models_dir), TEXT_N, seeds)
    if args.track in ("image", "both"):
        print_table(image_track(args.models_dir), IMAGE_N, seeds)
    print("\n(a) vs LR argmax (ovr: one-vs-rest, mn: multinomial); (b) vs LR at 0.5 and its argmax as a one-tag set;"
          "\nunknown = share answered unknown (test: held-out tagged items, unrel: items of no tag)")


if __name__ == "__main__":
    main()
