"""`export-st` on any local sentence-transformers folder, and `export-openclip` where open_clip imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkit.onnx.image import ImageEncoder
from modelkit.onnx.text import TextEncoder
from tests.unit.models.conftest import REPO, require_torch

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "red", "blue", "car", "good", "bad", "coffee", "tea"]
TEXTS = ["the cat sat on the mat", "a red car", "good coffee", "bad tea", "the dog"]


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj))


def tiny_st_folder(root: Path) -> Path:
    """A 2-layer random BERT with a word-level tokenizer, saved as a sentence-transformers folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    root.mkdir(parents=True)
    tok.save(str(root / "tokenizer.json"))
    _write_json(root / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]", "unk_token": "[UNK]",
        "model_max_length": 64,
    })
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    BertModel(cfg).eval().save_pretrained(str(root))
    _write_json(root / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ])
    _write_json(root / "sentence_bert_config.json", {"max_seq_length": 64})
    (root / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}
    _write_json(root / "1_Pooling/config.json", pooling)
    return root


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelbuild", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)


def test_export_st_exports_any_sentence_transformers_folder(tmp_path: Path) -> None:
    require_torch()
    from sentence_transformers import SentenceTransformer

    src = tiny_st_folder(tmp_path / "tiny-st")
    args = ("export-st", str(src), "--name", "tiny", "--out", str(tmp_path / "models"),
            "--cache-dir", str(tmp_path / "cache"), "--max-length", "64")
    first = _cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "text/tiny: built" in first.stdout and "export ONNX fp32" in first.stdout
    second = _cli(*args)
    assert "text/tiny: up-to-date" in second.stdout

    encoder = TextEncoder(tmp_path / "models/text/tiny", device="cpu")
    assert encoder.dim == 32 and encoder.manifest.cpu_file == "model.int8.onnx"
    st = SentenceTransformer(str(src), device="cpu", local_files_only=True)
    expected = st.encode(TEXTS, normalize_embeddings=True)
    fp32 = TextEncoder(tmp_path / "models/text/tiny", device="cpu")
    from modelkit.onnx.session import make_session

    fp32.session = make_session(tmp_path / "models/text/tiny/model.fp32.onnx", "cpu")
    assert (fp32.encode(TEXTS) * expected).sum(axis=1).min() >= 0.999
    assert (encoder.encode(TEXTS) * expected).sum(axis=1).min() >= 0.98


def _open_clip() -> Any:
    try:
        import open_clip
    except Exception as exc:  # beside a CPU-only torch it fails inside torchvision, not with ImportError
        pytest.skip(f"open_clip cannot be imported here ({type(exc).__name__}: {exc})")
    return open_clip


def test_export_openclip_image_and_text_towers(tmp_path: Path) -> None:
    require_torch()
    open_clip = _open_clip()
    import torch
    from PIL import Image

    from modelbuild.build import build_target, openclip_target

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")
    ckpt = tmp_path / "random-vit-b-32.pt"
    torch.save(model.state_dict(), ckpt)
    assert build_target(openclip_target("ViT-B-32", ckpt, "clip-test"), tmp_path / "models",
                        tmp_path / "cache") == "built"
    enc = ImageEncoder(tmp_path / "models/image/clip-test", device="cpu")
    assert enc.has_text_tower
    img = Image.fromarray((np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8))
    model.eval()
    with torch.no_grad():
        want_img = model.encode_image(preprocess(img)[None], normalize=True).numpy()
        tokens = open_clip.get_tokenizer("ViT-B-32")(TEXTS)
        want_txt = model.encode_text(tokens, normalize=True).numpy()
    assert float(enc.encode([img])[0] @ want_img[0]) >= 0.99  # PIL vs torchvision resize differ slightly
    assert (enc.encode_texts(TEXTS) * want_txt).sum(axis=1).min() >= 0.999
