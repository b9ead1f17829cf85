"""`python -m modelbuild fp16`: the float16 GPU file beside a built text model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelbuild.fp16 import FP16_FILE
from modelkit.onnx.session import make_session
from modelkit.onnx.text import TextEncoder
from tests.unit.models.conftest import require_torch
from tests.unit.models.test_export_tools import TEXTS, _cli, tiny_st_folder


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny exported text model (its folder, and the build cache its files are hard-linked from)."""
    require_torch()
    root = tmp_path_factory.mktemp("fp16")
    src = tiny_st_folder(root / "tiny-st")
    out = _cli("export-st", str(src), "--name", "tiny", "--out", str(root / "models"),
               "--cache-dir", str(root / "cache"), "--max-length", "64", "--no-int8")
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "models/text/tiny", root / "cache"


def test_fp16_file_becomes_the_gpu_file_and_matches_fp32(built: tuple[Path, Path]) -> None:
    model_dir, cache = built
    fp32_file = json.loads((model_dir / "manifest.json").read_text())["gpu_file"]
    out = _cli("fp16", str(model_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "fp16 GPU file written" in out.stdout
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["gpu_file"] == FP16_FILE and len(manifest["files"][FP16_FILE]) == 64
    # The CPU runs the fp16 graph too (with casts), so its vectors can be compared with the fp32 file's here.
    enc = TextEncoder(model_dir, device="cpu")
    want = enc.encode(TEXTS)
    enc.session = make_session(model_dir / FP16_FILE, "cpu")
    assert (enc.encode(TEXTS) * want).sum(axis=1).min() >= 0.999
    assert enc.manifest.file_for(True) == FP16_FILE and enc.manifest.file_for(False) != FP16_FILE
    # The build cache's manifest (hard-linked into the models folder) still describes what the cache holds.
    for cached in cache.glob("builds/text-tiny-*/manifest.json"):
        assert json.loads(cached.read_text())["gpu_file"] == fp32_file
    # Converting again starts from the fp32 file, not from the fp16 one.
    again = _cli("fp16", str(model_dir))
    assert again.returncode == 0, again.stderr[-3000:]


def test_fp16_refuses_what_it_cannot_convert(tmp_path: Path, built: tuple[Path, Path]) -> None:
    missing = _cli("fp16", str(tmp_path / "nothing"))
    assert missing.returncode != 0 and "make models" in missing.stderr
    image = tmp_path / "image"
    image.mkdir()
    manifest = json.loads((built[0] / "manifest.json").read_text())
    manifest.update(modality="image", preprocessing={"kind": "image"})
    (image / "manifest.json").write_text(json.dumps(manifest))
    refused = _cli("fp16", str(image))
    assert refused.returncode == 1 and "fp16 conversion is for text models" in refused.stderr
