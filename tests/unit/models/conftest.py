"""Where the built models live, and skips that say why when they or torch are missing."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
TEXT_MODEL = "text/multilingual-e5-small"
IMAGE_MODEL = "image/efficientnet-lite0"


def models_root() -> Path:
    return Path(os.environ.get("KASHF_MODELS_DIR", REPO / "models"))


def _model_dir(rel: str) -> Path:
    path = models_root() / rel
    if not (path / "manifest.json").is_file():
        pytest.skip(f"{path} is not built: run `make models` (python -m modelbuild build)")
    return path


@pytest.fixture(scope="session")
def text_model_dir() -> Path:
    return _model_dir(TEXT_MODEL)


@pytest.fixture(scope="session")
def image_model_dir() -> Path:
    return _model_dir(IMAGE_MODEL)


def require_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (it belongs to the build extra)")
