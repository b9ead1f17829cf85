"""What the service needs of its image model (``ImageEncoder`` is one; tests hand in others)."""

from __future__ import annotations

from modelkit.onnx.image import ImageModel

Encoder = ImageModel
