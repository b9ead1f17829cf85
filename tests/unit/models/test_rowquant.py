"""Per-row int8 activation scales (modelbuild/rowquant.py): a text's vector ignores its batch-mates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelbuild.export import FP32_FILE, INT8_FILE, export_sentence_transformer
from modelkit.onnx.session import make_session
from modelkit.onnx.text import TextEncoder
from tests.unit.models.conftest import require_torch
from tests.unit.models.test_export_tools import TEXTS, tiny_st_folder

# A short text, a long one, repeated words (wide activations) and unknown words: very different rows.
COMPANY = ["a", "the red dog sat on the blue mat with a good cat " * 4, "dog dog dog dog dog dog", "zzz qqq"]


def _alone_and_batched(enc: TextEncoder, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    alone = np.concatenate([enc.encode([t]) for t in texts])
    batched = enc.encode([*texts, *COMPANY])[: len(texts)]
    return alone, batched


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require_torch()
    root = tmp_path_factory.mktemp("rowquant")
    src = tiny_st_folder(root / "tiny-st")
    out = {}
    for scales in ("row", "call"):
        out[scales] = root / scales
        export_sentence_transformer(src, out[scales], name="tiny", prefix="", max_length=64, sources=[],
                                    build_key="k", row_scales=scales == "row")
    return out


def test_row_scales_make_a_vector_independent_of_its_batch(built: dict[str, Path]) -> None:
    import onnx

    enc = TextEncoder(built["row"], device="cpu")
    alone, batched = _alone_and_batched(enc, TEXTS)
    assert 1 - np.sum(alone * batched, axis=1).min() < 1e-6
    graph = onnx.load(str(built["row"] / INT8_FILE)).graph
    ops = [n.op_type for n in graph.node]
    assert "DynamicQuantizeLinear" not in ops
    assert ops.count("MatMulInteger") == 2 * 6 and ops.count("QuantizeLinear") == 2 * 4  # qkv share an input

    # As close to fp32 as one scale per call, text by text (the same integers when a text runs alone).
    per_call = TextEncoder(built["call"], device="cpu")
    per_call_alone = np.concatenate([per_call.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(alone, per_call_alone, atol=1e-5)
    fp32 = TextEncoder(built["row"], device="cpu")
    fp32.session = make_session(built["row"] / FP32_FILE, "cpu")
    assert np.sum(alone * fp32.encode(TEXTS), axis=1).min() > 0.98

