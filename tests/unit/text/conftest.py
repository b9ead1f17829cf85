"""Fixtures of the text service tests: a tiny model built here, and the real model when built."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.textnorm import normalize_text
from tests.unit.text.texts import CORPUS
from tests.unit.text.tiny_text_model import build_tiny_text_model

REPO = Path(__file__).resolve().parents[3]
REAL_TEXT_MODEL = "text/multilingual-e5-small"



@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding ``text/tiny`` whose vocabulary covers the normalised corpus."""
    root = tmp_path_factory.mktemp("models")
    words = [w for text in CORPUS for w in normalize_text(text).split()]
    build_tiny_text_model(root / "text" / "tiny", words)
    return root


@pytest.fixture(scope="session")
def real_models_dir() -> Path:
    """The built models (``make models``); tests marked ``models`` skip when they are absent."""
    root = Path(os.environ.get("KASHF_MODELS_DIR", REPO / "models"))
    if not (root / REAL_TEXT_MODEL / "manifest.json").is_file():
        pytest.skip(f"no built text model under {root} (run `make models`)")
    return root
