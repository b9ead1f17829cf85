"""Export of a dataset's tagger: the gateway asks the dataset's model service, which answers with a blob key."""

from __future__ import annotations

from typing import Literal

from shared.schemas.base import Message
from shared.schemas.inference import HeadRef


class ExportTag(Message):
    """A tag of the dataset as the package describes it (the head decides which are columns)."""

    id: int
    title: str
    active: bool
    threshold_override: float | None = None


class ExportRequest(Message):
    head: HeadRef
    dataset: str  # the dataset's name: the package's file name and kashf.json
    kind: Literal["text", "image"]
    tags: list[ExportTag]


class ExportReply(Message):
    """The zip lies in the blobs bucket under ``key``; whoever reads it deletes it (the bucket's TTL otherwise)."""

    key: str
    size: int
    version: int
    filename: str
