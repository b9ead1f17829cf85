"""The text encoder the service runs: the built ONNX model named by the settings."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import structlog

from shared.inference.layout import ModelLayout
from shared.inference.text import TextEncoder
from shared.settings import TextServiceSettings

log = structlog.get_logger(__name__)


class Encoder(Protocol):
    """What the service needs of a text model (shared.inference.TextEncoder is one)."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32, rows L2-normalised."""
        ...

    def warmup(self) -> None: ...


def load_encoder(settings: TextServiceSettings, layout: ModelLayout) -> Encoder:
    """Load and warm the model (blocking: call in a thread). int8 on CPU, fp32 on GPU per the manifest."""
    encoder = TextEncoder(settings.text_model_dir, device=settings.device, threads=layout.threads)
    encoder.warmup()
    log.info("text_model_loaded", model_id=encoder.model_id, dim=encoder.dim, device=encoder.device,
             workers=layout.workers, threads=layout.threads, model_dir=str(settings.text_model_dir))
    return encoder
