"""What the service needs of its text model (``modelkit.onnx.text.TextEncoder`` is one; tests hand in others)."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Encoder(Protocol):
    """What the service needs of a text model (modelkit.onnx.TextEncoder is one)."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32, rows L2-normalised."""
        ...

    def warmup(self) -> None: ...
