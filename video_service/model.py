"""The image encoder that embeds sampled frames: the built ONNX model named by the settings."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import structlog
from PIL import Image

from shared.inference.image import ImageEncoder
from shared.settings import VideoServiceSettings

log = structlog.get_logger(__name__)


class Encoder(Protocol):
    """What the service needs of an image model (shared.inference.ImageEncoder is one)."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def preprocess(self, image: Image.Image, /) -> np.ndarray:
        """(3, crop, crop) float32 model input of one RGB image."""
        ...

    def encode_core(self, batch: np.ndarray, /) -> np.ndarray:
        """(n, dim) embeddings of a (n, 3, crop, crop) batch: one session.run."""
        ...

    def warmup(self) -> None: ...


def load_encoder(settings: VideoServiceSettings) -> ImageEncoder:
    """Load and warm the model (blocking: call in a thread)."""
    encoder = ImageEncoder(settings.image_model_dir, device=settings.device, threads=settings.threads)
    encoder.warmup()
    log.info("image_model_loaded", model_id=encoder.model_id, dim=encoder.dim,
             model_dir=str(settings.image_model_dir))
    return encoder
