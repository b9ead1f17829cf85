"""Fixtures of the vision tests: tiny models built here, the real model when built, a loopback server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fileserver import FileServer, file_server
from tests.unit.vision.tiny_image_model import build_tiny_image_model

REPO = Path(__file__).resolve().parents[3]
REAL_IMAGE_MODEL = "image/efficientnet-lite0"


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``image/tiny-clip`` (two towers) and ``image/tiny`` (image tower only)."""
    root = tmp_path_factory.mktemp("models")
    build_tiny_image_model(root / "image" / "tiny-clip", text_tower=True)
    build_tiny_image_model(root / "image" / "tiny", text_tower=False)
    return root


@pytest.fixture(scope="session")
def real_models_dir() -> Path:
    """The built models (``make models``); tests marked ``models`` skip when they are absent."""
    root = Path(os.environ.get("KASHF_MODELS_DIR", REPO / "models"))
    if not (root / REAL_IMAGE_MODEL / "manifest.json").is_file():
        pytest.skip(f"no built image model under {root} (run `make models`)")
    return root


@pytest.fixture(scope="session")
def static_server() -> Iterator[FileServer]:
    with file_server() as server:
        yield server
