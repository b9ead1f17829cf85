"""Does a text's vector depend on the texts that share its model call? Ways to run the text model, compared.

Each way embeds the held-out texts (``tests/unit/models/sentences.py`` and ``tests/unit/trainer/reviews.py``,
none used for calibration) once alone (one text per call) and once batched: shuffled into padded calls of
32, each call also holding one text truncated at 512 tokens (the widest batch-mate there is). Printed per
way: the largest ``1 - cosine`` between a text's alone and batched vectors, the largest change of a
logistic head's probability (6 review topics, fitted on that way's own alone vectors), the worst cosine
to fp32 alone, and texts per CPU-second (one-thread calls, rounds interleaved) against the
``DynamicQuantizeLinear`` int8 baseline (one scale per call) in the same run, on two kinds of traffic
in calls of 32: ``mixed``, the same texts shuffled (3 to 120 tokens: padding costs), and ``uniform``,
256 reviews of 20 to 30 tokens from ``bench.text`` (where batching pays most).

Ways: ``int8 per call`` (baseline: ``quantize_dynamic`` as built until now), ``int8 one text per call``
(the baseline model, batch 1), ``fp32 batched``, ``static int8 (QDQ)`` (fixed activation scales
calibrated on ``modelbuild.smoothing.CALIBRATION_TEXTS``) and ``int8 per row`` (``modelbuild/rowquant.py``:
dynamic scales per text). The shipped ``model.int8.onnx`` is one of the last two, whichever the build makes.
Run: ``python -m bench.batch_invariance`` (10 to 20 min on 2 cores, most of it the static way's
calibration and runs; ``--no-static`` skips it; needs ``make models``).
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from sklearn.linear_model import LogisticRegression

from bench._stack import load_note, models_dir
from bench.text import make_texts
from modelbuild.export import FP32_FILE, INT8_FILE
from modelbuild.rowquant import per_row_activation_scales
from modelbuild.smoothing import CALIBRATION_TEXTS, smooth_ffn_inputs
from modelkit.onnx.text import TextEncoder
from tests.unit.models.sentences import ALL
from tests.unit.trainer import reviews

TOPICS = ("RECOMMEND", "POOR_QUALITY", "DELIVERY", "PRICE", "SUPPORT", "SIZE")
LONG = " ".join([*ALL, *ALL, *ALL])  # past 512 tokens: truncated


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def baseline_int8(model_dir: Path, out: Path) -> Path:
    """``model.int8.onnx`` as built before per-row scales: the smoothed model through ``quantize_dynamic``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    smoothed = out.with_suffix(".smoothed.onnx")
    smooth_ffn_inputs(model_dir / FP32_FILE, smoothed, model_dir / "tokenizer.json", "query: ", 512, 1)
    quantize_dynamic(smoothed, out, weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"MatMulConstBOnly": True})
    return out


def row_int8(dynamic: Path, out: Path) -> Path:
    model = onnx.load(str(dynamic))
    per_row_activation_scales(model)
    onnx.save(model, str(out))
    return out


def static_int8(model_dir: Path, enc: TextEncoder, out: Path) -> Path:
    """Fixed activation scales (MinMax over the calibration texts, each alone), QDQ, weights per channel."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    smoothed = out.with_suffix(".smoothed.onnx")
    smooth_ffn_inputs(model_dir / FP32_FILE, smoothed, model_dir / "tokenizer.json", "query: ", 512, 1)
    graph = onnx.load(str(smoothed), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    activation_matmuls = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in weights]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.feeds: Iterator[dict[str, np.ndarray]] = (enc.encode_pre([t]) for t in CALIBRATION_TEXTS)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    quantize_static(smoothed, out, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    nodes_to_exclude=activation_matmuls)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=models_dir())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-static", action="store_true", help="skip the static int8 way (its calibration)")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    model_dir = args.models_dir / "text/multilingual-e5-small"
    enc = TextEncoder(model_dir, device="cpu", threads=1)
    topics = [(t, k) for k, name in enumerate(TOPICS) for t in getattr(reviews, name)]
    texts = [*(t for t, _ in topics), *ALL]
    labels = np.array([k for _, k in topics])
    rng = random.Random(0)
    shuffled = list(range(len(texts)))
    rng.shuffle(shuffled)
    calls = [shuffled[i : i + 31] for i in range(0, len(shuffled), 31)]
    print(f"{len(texts)} texts, {len(calls)} calls of 32 (one 512-token text in each); {model_dir}; {load_note()}")

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        t0 = time.perf_counter()
        base = baseline_int8(model_dir, tmp / "base.onnx")
        ways: dict[str, tuple[ort.InferenceSession, bool]] = {
            "int8 per call (baseline)": (session(base), False),
            "int8 one text per call": (session(base), True),
            "fp32 batched": (session(model_dir / FP32_FILE), False),
            "int8 per row (rowquant)": (session(row_int8(base, tmp / "row.onnx")), False),
        }
        if not args.no_static:
            ways["static int8 (QDQ)"] = (session(static_int8(model_dir, enc, tmp / "static.onnx")), False)
        shipped = load_note_int8(model_dir)
        print(f"built the ways in {time.perf_counter() - t0:.0f}s; shipped {INT8_FILE}: {shipped}")

        def run(sess: ort.InferenceSession, batch: list[str], one_by_one: bool) -> np.ndarray:
            enc.session = sess
            if one_by_one:
                return np.concatenate([enc.encode([t]) for t in batch])
            return enc.encode(batch)

        def batched(sess: ort.InferenceSession, one_by_one: bool) -> np.ndarray:
            out = np.empty((len(texts), enc.dim), dtype=np.float32)
            for idx in calls:
                out[idx] = run(sess, [texts[i] for i in idx] + [LONG], one_by_one)[:-1]
            return out

        mixed = [[texts[i] for i in shuffled[k : k + 32]] for k in range(0, len(shuffled), 32)]
        uniform = [make_texts(256)[k : k + 32] for k in range(0, 256, 32)]

        rates: dict[tuple[str, int], list[float]] = {(name, k): [] for name in ways for k in (0, 1)}
        for _ in range(args.rounds):
            for name, (sess, one_by_one) in ways.items():
                for k, traffic in enumerate((mixed, uniform)):
                    start = time.thread_time()
                    for batch in traffic:
                        run(sess, batch, one_by_one)
                    rates[name, k].append(sum(map(len, traffic)) / (time.thread_time() - start))
        fp32_alone = run(ways["fp32 batched"][0], texts, True)
        base = [float(np.median(rates["int8 per call (baseline)", k])) for k in (0, 1)]
        print(f"\n{'':26} {'max 1-cos':>10} {'max |dp|':>9} {'cos fp32':>9}   texts/CPU-s (vs baseline): "
              "mixed, uniform")
        for name, (sess, one_by_one) in ways.items():
            alone = run(sess, texts, True)
            together = batched(sess, one_by_one)
            head = LogisticRegression(max_iter=2000, C=10.0).fit(alone[: len(labels)], labels)
            dp = np.abs(head.predict_proba(alone) - head.predict_proba(together)).max()
            drift = 1 - np.sum(alone * together, axis=1).min()
            worst = np.sum(alone * fp32_alone, axis=1).min()
            rate = [float(np.median(rates[name, k])) for k in (0, 1)]
            print(f"{name:26} {drift:10.2e} {dp:9.4f} {worst:9.4f}   "
                  + "  ".join(f"{r:6.1f} ({r / b:.2f})" for r, b in zip(rate, base, strict=True)))
    image_invariance(args.models_dir / "image/efficientnet-lite0")


def image_invariance(model_dir: Path) -> None:
    """The image model (fp32, no activation quantisation): each photo alone against a batch of 32."""
    import skimage.data
    from PIL import Image

    from modelkit.onnx.image import ImageEncoder

    enc = ImageEncoder(model_dir, device="cpu", threads=1)
    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]
    photos = [Image.fromarray(np.asarray(getattr(skimage.data, n)())).convert("RGB") for n in names]
    noise = np.random.default_rng(0).integers(0, 256, (32 - len(photos), 64, 64, 3), dtype=np.uint8)
    pixels = np.stack([enc.preprocess(im) for im in [*photos, *map(Image.fromarray, noise)]])
    alone = np.concatenate([enc.encode_batch(pixels[i : i + 1]) for i in range(len(photos))])
    together = enc.encode_batch(pixels)[: len(photos)]
    times = {}
    for label, chunk in (("alone", 1), ("batched", 32)):
        start = time.thread_time()
        for i in range(0, 32, chunk):
            enc.encode_batch(pixels[i : i + chunk])
        times[label] = 32 / (time.thread_time() - start)
    ops = {n.op_type for n in onnx.load(str(model_dir / enc.manifest.cpu_file), load_external_data=False).graph.node}
    print(f"\nimage {enc.manifest.name} ({enc.manifest.cpu_file}, dynamic quantisation: "
          f"{'yes' if 'DynamicQuantizeLinear' in ops else 'no'}): max 1-cos alone vs batch of 32 "
          f"{1 - np.sum(alone * together, axis=1).min():.2e}; images/CPU-s alone {times['alone']:.1f}, "
          f"batched {times['batched']:.1f}")


def load_note_int8(model_dir: Path) -> str:
    graph = onnx.load(str(model_dir / INT8_FILE), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    return "per row" if "DynamicQuantizeLinear" not in ops and "QuantizeLinear" in ops else "per call"


if __name__ == "__main__":
    main()
