"""The services' runtime needs no torch: manifest, sessions, text and image encoders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage

from modelkit.onnx.manifest import load_manifest
from modelkit.onnx.session import cuda_available, make_session, resolve_device
from shared.errors import Unavailable
from tests.unit.models.conftest import REPO

SCRIPT = r"""
import json, sys
for name in ("torch", "transformers", "sentence_transformers", "torchvision"):
    sys.modules[name] = None  # any import of these now raises ImportError
from pathlib import Path
import numpy as np
from PIL import Image
from modelkit.onnx.image import ImageEncoder
from modelkit.onnx.text import TextEncoder

text = TextEncoder(Path(sys.argv[1]), device="cpu")
text.warmup()
tv = text.encode(["كتاب خوبی بود، ۵ ستاره ⭐", "The parcel never arrived."])
image = ImageEncoder(Path(sys.argv[2]), device="cpu")
image.warmup()
iv = image.encode([Image.open(sys.argv[3]), Image.open(sys.argv[3]).rotate(90, expand=True)])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers") and sys.modules[m])
print(json.dumps({"text": [text.model_id, list(tv.shape), np.linalg.norm(tv, axis=1).tolist()],
                  "image": [image.model_id, list(iv.shape), float(iv[0] @ iv[1])], "heavy": heavy}))
"""


@pytest.mark.models
def test_encoders_run_with_torch_blocked(text_model_dir: Path, image_model_dir: Path) -> None:
    astronaut = Path(skimage.__file__).parent / "data" / "astronaut.png"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(text_model_dir), str(image_model_dir), str(astronaut)],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    model_id, shape, norms = out["text"]
    assert model_id.startswith("multilingual-e5-small@") and shape == [2, 384]
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    model_id, shape, rotated_sim = out["image"]
    assert model_id.startswith("efficientnet-lite0@") and shape == [2, 1280]
    assert 0.3 < rotated_sim < 0.9999  # a rotated photo is related, not identical


def test_missing_model_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="make models"):
        load_manifest(tmp_path / "text" / "nothing-here")


@pytest.mark.skipif(cuda_available(), reason="this onnxruntime has CUDA")
def test_cuda_request_without_cuda_is_refused_and_auto_falls_back(tmp_path: Path) -> None:
    assert resolve_device("auto") == "cpu"
    with pytest.raises(Unavailable, match="CUDAExecutionProvider"):
        make_session(tmp_path / "model.onnx", device="cuda")
