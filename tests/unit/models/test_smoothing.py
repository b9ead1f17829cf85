"""Smoothing before int8 (modelbuild/smoothing.py) changes how the model quantises, not what it computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelbuild.export import FP32_FILE, INT8_FILE, export_sentence_transformer
from modelbuild.smoothing import smooth_ffn_inputs
from tests.unit.models.conftest import require_torch
from tests.unit.models.test_export_tools import TEXTS, tiny_st_folder


def _run(path: Path, texts: list[str], tokenizer: Path) -> np.ndarray:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    tok.enable_padding(pad_id=0)
    enc = tok.encode_batch(texts)
    feeds = {"input_ids": np.array([e.ids for e in enc]), "attention_mask": np.array([e.attention_mask for e in enc])}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feeds)[0])


def test_smoothing_keeps_the_fp32_function_and_int8_covers_every_weight_matmul(tmp_path: Path) -> None:
    require_torch()
    import onnx

    src = tiny_st_folder(tmp_path / "tiny-st")
    out = tmp_path / "tiny"
    export_sentence_transformer(src, out, name="tiny", prefix="", max_length=64, sources=[], build_key="k")
    smoothed = tmp_path / "smoothed.onnx"
    assert smooth_ffn_inputs(out / FP32_FILE, smoothed, out / "tokenizer.json", "", 64, pad_id=0) == 2  # 2 layers

    # Same outputs, in a padded batch too (padded rows are zeroed, and no real token reads them).
    texts = [*TEXTS, "the red dog sat on the blue mat with a good cat"]
    original = _run(out / FP32_FILE, texts, out / "tokenizer.json")
    np.testing.assert_allclose(_run(smoothed, texts, out / "tokenizer.json"), original, atol=2e-5)
    graph = onnx.load(str(smoothed)).graph
    assert sum(n.name.endswith("/smooth") for n in graph.node) == 2
    assert any(n.name == "padding_mask/Unsqueeze" for n in graph.node)

    # The shipped int8 file: every encoder weight MatMul quantised, none left in fp32.
    int8 = onnx.load(str(out / INT8_FILE)).graph
    weights = {i.name for i in int8.initializer}
    fp32_weight_matmuls = [n.name for n in int8.node if n.op_type == "MatMul" and n.input[1] in weights
                           and "/encoder/" in n.name]
    assert fp32_weight_matmuls == []
    assert sum(n.op_type == "MatMulInteger" for n in int8.node) == 2 * 6  # q, k, v, out, up, down per layer
    np.testing.assert_allclose(np.linalg.norm(_run(out / INT8_FILE, texts, out / "tokenizer.json"), axis=1), 1.0,
                               atol=1e-4)


def test_smoothing_factors_are_powers_of_two_that_last_bit_noise_does_not_move() -> None:
    """The factors follow calibration maxima that differ in their last bits between CPUs; rounded to powers of
    two they stay put (so the int8 file and the model id do), and scaling a weight by them is exact."""
    from modelbuild.smoothing import smoothing_factors

    rng = np.random.default_rng(7)
    x_max = rng.lognormal(0.0, 1.5, 4096).astype(np.float32)
    w_max = rng.lognormal(-2.0, 0.5, 4096).astype(np.float32)
    factors = smoothing_factors(x_max, w_max)
    exponents = np.log2(factors)
    np.testing.assert_array_equal(exponents, np.rint(exponents))
    for noise in (1e-7, -1e-7, 1e-6, -1e-6):  # what other kernels' summation order does to a maximum
        np.testing.assert_array_equal(smoothing_factors(x_max * np.float32(1 + noise), w_max), factors)
    w = rng.normal(size=(4096, 8)).astype(np.float32)
    np.testing.assert_array_equal((w * factors[:, None]) / factors[:, None], w)
    # Near SmoothQuant's own value: within a factor of the square root of two.
    exact = np.maximum(x_max, 1e-5) ** 0.6 / np.maximum(w_max, 1e-5) ** 0.4
    inside = (exact > 1e-2) & (exact < 1e4)
    assert np.all(np.abs(np.log2(factors[inside] / exact[inside])) <= 0.5 + 1e-9)
