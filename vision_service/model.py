"""The image encoder the service runs: the built ONNX model named by the settings."""

from __future__ import annotations

import structlog

from shared.inference.image import ImageEncoder, ImageModel
from shared.inference.layout import ModelLayout
from shared.settings import VisionServiceSettings

log = structlog.get_logger(__name__)


# What the service needs of its image model.
Encoder = ImageModel


def load_encoder(settings: VisionServiceSettings, layout: ModelLayout) -> ImageEncoder:
    """Load and warm the model (blocking: call in a thread)."""
    encoder = ImageEncoder(settings.image_model_dir, device=settings.device, threads=layout.threads)
    encoder.warmup()
    log.info("image_model_loaded", model_id=encoder.model_id, dim=encoder.dim, device=encoder.device,
             workers=layout.workers, threads=layout.threads,
             text_tower=encoder.has_text_tower, model_dir=str(settings.image_model_dir))
    return encoder
