"""Requests to the model services and their replies."""

from __future__ import annotations

import base64

import numpy as np
from pydantic import Base64Bytes, Field

from shared.schemas.base import Message

# The tag answered when no tag passes (gateway and model services alike).
UNKNOWN_TAG_ID = 0
UNKNOWN_TITLE = "ناآشنا"


def pack_vectors(vectors: np.ndarray) -> bytes:
    """Row-major float32 bytes of an (n, dim) matrix."""
    return np.ascontiguousarray(vectors, dtype=np.float32).tobytes()


def unpack_vectors(data: bytes, dim: int) -> np.ndarray:
    return np.frombuffer(data, dtype=np.float32).reshape(-1, dim)


class TagRef(Message):
    """An active tag of the dataset; the title serves zero-shot models. ``threshold``: the dataset's override
    (update_tag) of the threshold the head learned (or of the zero-shot one); None keeps that one."""

    id: int
    title: str
    threshold: float | None = None


class TagSelection(Message):
    """Which tags a tag call answers per item: at most ``top_k`` (None: all that pass), and with
    ``min_probability`` set, every tag at or above it instead of each tag's own threshold."""

    top_k: int | None = None
    min_probability: float | None = None


class ScoredTag(Message):
    id: int
    title: str
    probability: float


class HeadRef(Message):
    """Which fitted head to use: None when the dataset was never trained."""

    dataset_id: int
    version: int | None = None


class EmbedTextsRequest(Message):
    texts: list[str]


class EmbedReply(Message):
    model_id: str
    dim: int
    vectors: Base64Bytes

    def array(self) -> np.ndarray:
        return unpack_vectors(self.vectors, self.dim)

    @classmethod
    def from_array(cls, model_id: str, vectors: np.ndarray) -> EmbedReply:
        """Base64Bytes fields take base64 text when built in Python: encode here, once."""
        encoded = base64.b64encode(pack_vectors(vectors))
        return cls(model_id=model_id, dim=int(vectors.shape[1]), vectors=encoded)


class TagTextsRequest(TagSelection):
    head: HeadRef
    tags: list[TagRef]
    texts: list[str]


class ItemResult(Message):
    """Tags of one item, or why it could not be tagged."""

    tags: list[ScoredTag] = Field(default_factory=list)
    error: str | None = None
    error_code: str | None = None


class TagReply(Message):
    model_id: str
    items: list[ItemResult]


class ModelInfoRequest(Message):
    """Asks a model service which embedding model it runs (no fields)."""


class ModelInfoReply(Message):
    model_id: str
    dim: int
