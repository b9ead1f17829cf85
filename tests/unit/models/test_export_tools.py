"""`export-st` on any local sentence-transformers folder; `export-openclip` on random open_clip models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from skimage import data as skdata

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


ARCH = "ViT-S-32-alt"  # the smallest of open_clip's own ViT architectures (43M parameters, both towers)


def test_export_openclip_image_and_text_towers(tmp_path: Path) -> None:
    require_torch()
    import onnx
    import open_clip  # the build extra's open-clip-torch, beside the torchvision built for the pinned torch
    import torch
    from PIL import Image

    from modelbuild.build import build_target, openclip_target
    from modelkit.onnx.layout import ModelLayout, load_model

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(ARCH)  # random weights: no hub, no download
    ckpt = tmp_path / "random-vit-s-32-alt.pt"
    torch.save(model.state_dict(), ckpt)
    assert build_target(openclip_target(ARCH, ckpt, "clip-test"), tmp_path / "models",
                        tmp_path / "cache") == "built"

    folder = tmp_path / "models/image/clip-test"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["modality"] == "image" and manifest["dim"] == 256
    assert manifest["text_tower"] == {"file": "text.fp32.onnx", "tokenizer": "text_tokenizer.json",
                                      "context_length": 77, "dim": 256, "pad_id": 0, "input_name": "text"}
    assert sorted(manifest["files"]) == ["model.fp32.onnx", "text.fp32.onnx", "text_tokenizer.json"]
    assert {"package": "open_clip_torch", "version": open_clip.__version__} in manifest["sources"]
    pre = manifest["preprocessing"]
    assert (pre["crop"], pre["interpolation"], pre["resize_mode"]) == (224, "bicubic", "shortest")
    assert onnx.load(str(folder / "model.fp32.onnx"), load_external_data=False).producer_version == ""

    # What vision_service and video_service do at start: open the folder, warm both towers.
    enc = load_model(ImageEncoder, folder, "cpu", ModelLayout(workers=1, threads=1))
    assert enc.has_text_tower and enc.dim == 256
    noise = Image.fromarray((np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8))
    photo = Image.fromarray(skdata.chelsea())
    pixels = np.stack([enc.preprocess(img) for img in (noise, photo)])
    model.eval()
    with torch.no_grad():
        want = model.encode_image(torch.from_numpy(pixels), normalize=True).numpy()
        torchvision_photo = model.encode_image(preprocess(photo)[None], normalize=True).numpy()[0]
        want_txt = model.encode_text(open_clip.get_tokenizer(ARCH)(TEXTS), normalize=True).numpy()
    # Both towers: ONNX against PyTorch on the same inputs; the texts through the rebuilt `tokenizers` tokenizer.
    assert (enc.encode_batch(pixels) * want).sum(axis=1).min() >= 0.9999
    assert (enc.encode_texts(TEXTS) * want_txt).sum(axis=1).min() >= 0.999
    # The service's preprocessing (Pillow) against open_clip's own (torchvision) on a photo: resizes differ slightly.
    assert float(enc.encode([photo])[0] @ torchvision_photo) >= 0.99


def test_export_openclip_cli_takes_an_open_clip_folder_and_never_a_random_model(tmp_path: Path) -> None:
    require_torch()
    import open_clip
    import torch

    config = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                              "patch_size": 16},
              "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    folder = tmp_path / "my-clip"
    folder.mkdir()
    _write_json(folder / "open_clip_config.json", {"model_cfg": config, "preprocess_cfg": {}})
    args = ("export-openclip", "--model", f"local-dir:{folder}", "--name", "my-clip", "--out",
            str(tmp_path / "models"), "--cache-dir", str(tmp_path / "cache"))
    no_weights = _cli(*args)
    assert no_weights.returncode == 1 and "error: image/my-clip" in no_weights.stderr, no_weights.stderr[-2000:]
    assert not (tmp_path / "models/image/my-clip").exists()

    torch.manual_seed(0)
    model = open_clip.CLIP(**config)  # type: ignore[arg-type]
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    built = _cli(*args)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "image/my-clip: built" in built.stdout
    enc = ImageEncoder(tmp_path / "models/image/my-clip", device="cpu")
    model.eval()
    with torch.no_grad():
        want = model.encode_text(open_clip.SimpleTokenizer(context_length=8)(TEXTS), normalize=True).numpy()
    assert (enc.encode_texts(TEXTS) * want).sum(axis=1).min() >= 0.999

    missing = _cli("export-openclip", "--model", ARCH, "--checkpoint", str(tmp_path / "nope.pt"), "--name", "x",
                   "--out", str(tmp_path / "models"))
    assert missing.returncode == 1 and "nope.pt not found" in missing.stderr, missing.stderr[-2000:]
