"""Fixtures of the text service tests: a tiny model built here, and the real model when built."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelkit.runtime import stop_service
from shared.bus import Bus
from shared.settings import TextServiceSettings
from shared.textnorm import normalize_text
from tests.unit.text.texts import CORPUS
from tests.unit.text.tiny_text_model import build_tiny_text_model
from text_service.main import setup

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


@pytest.fixture(scope="module")
async def client(nats_url: str, real_models_dir: Path) -> AsyncIterator[Bus]:
    """The real text model served over NATS once per test module, and a client bus."""
    settings = TextServiceSettings(  # type: ignore[call-arg]
        nats_url=nats_url, models_dir=real_models_dir, device="cpu"  # the default text model
    )
    bus = await Bus.connect(nats_url, "text_service")
    readiness = await setup(settings, bus)
    client = await Bus.connect(nats_url, "test-client")
    yield client
    await client.close()
    await stop_service(bus, readiness, 10.0)
