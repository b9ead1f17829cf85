"""The shipped int8 text model against the first build's recipe: closeness to fp32 and speed.

Baseline, quantised in this run from the same fp32 file: dynamic int8 with the 12 feed-forward output
projections kept in fp32 (the first build). Ours: the built ``model.int8.onnx`` (every weight MatMul in
int8 after ``modelbuild/smoothing.py``). Closeness: cosine to fp32 over the sentences of
``tests/unit/models/sentences.py`` and the reviews of ``tests/unit/trainer/reviews.py`` (neither used for
calibration), each text alone, in length-sorted batches of 32 (as the service runs them) and the 20
sentences in one padded batch. Speed: texts per CPU-second of one-thread calls at batch 32, rounds
interleaved. Head quality on these vectors: ``python -m bench.heads --track text``.
Run: ``python -m bench.int8`` (about 1 min; needs ``make models``).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from bench._stack import load_note, models_dir
from bench.text import make_texts
from modelbuild.export import FP32_FILE, INT8_FILE
from modelbuild.smoothing import ffn_down_projections
from modelkit.onnx.manifest import load_manifest
from tests.unit.models.sentences import ALL
from tests.unit.trainer import reviews


def first_build_int8(fp32: Path, out: Path) -> Path:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    kept = [n.name for n in ffn_down_projections(onnx.load(str(fp32), load_external_data=False).graph)]
    logging.getLogger().setLevel(logging.ERROR)
    quantize_dynamic(fp32, out, weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=kept)
    return out


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=models_dir())
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model_dir = args.models_dir / "text/multilingual-e5-small"
    pre = load_manifest(model_dir).preprocessing
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_truncation(max_length=512)
    tok.enable_padding(pad_id=1, pad_token="<pad>")
    prefix = getattr(pre, "prefix", "")

    def feeds(texts: list[str]) -> dict[str, np.ndarray]:
        enc = tok.encode_batch([prefix + t for t in texts])
        return {"input_ids": np.array([e.ids for e in enc]),
                "attention_mask": np.array([e.attention_mask for e in enc])}

    held_out = list(ALL) + [t for name, v in vars(reviews).items() if name.isupper() and isinstance(v, list) for t in v]
    order = sorted(range(len(held_out)), key=lambda i: len(held_out[i]))
    reference = session(model_dir / FP32_FILE, 2)

    def alone(s: ort.InferenceSession) -> np.ndarray:
        return np.concatenate([s.run(None, feeds([t]))[0] for t in held_out])

    def sorted_batches(s: ort.InferenceSession) -> np.ndarray:
        out = np.empty((len(held_out), 384), dtype=np.float32)
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            out[idx] = s.run(None, feeds([held_out[i] for i in idx]))[0]
        return out

    fp32 = alone(reference)
    timed = [feeds(batch) for batch in np.array_split(np.array(make_texts(256), dtype=object), 8)]
    print(f"{len(held_out)} held-out texts, {model_dir}; {load_note()}")
    with tempfile.TemporaryDirectory() as tmp:
        candidates = {
            "first build (FFN outputs fp32)": session(first_build_int8(model_dir / FP32_FILE, Path(tmp) / "a.onnx"), 1),
            "shipped (all int8, smoothed)": session(model_dir / INT8_FILE, 1),
        }
        rates: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(args.rounds):
            for name, s in candidates.items():
                t0 = time.thread_time()
                for f in timed:
                    s.run(None, f)
                rates[name].append(256 / (time.thread_time() - t0))
        print(f"\n{'':32} {'alone':>8} {'sorted 32':>10} {'20 in 1':>8}   texts per CPU-s (1 thread, batch 32)")
        medians = {}
        for name, s in candidates.items():
            worst = [float(np.sum(alone(s) * fp32, axis=1).min()),
                     float(np.sum(sorted_batches(s) * fp32, axis=1).min()),
                     float(np.sum(s.run(None, feeds(held_out[:20]))[0] * fp32[:20], axis=1).min())]
            medians[name] = float(np.median(rates[name]))
            print(f"{name:32} " + " ".join(f"{w:8.4f}" for w in worst) + f"   {medians[name]:8.1f}")
        first, shipped = medians.values()
        print(f"\nworst cosine to fp32 per way of batching; speed shipped / first build: {shipped / first:.2f}")


if __name__ == "__main__":
    main()
