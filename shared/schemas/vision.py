"""Aliases kept for importers: the vision and video wire schemas live in ``shared.schemas.media``."""

from __future__ import annotations

from shared.schemas.media import EmbedImagesReply, EmbedImagesRequest, MediaInput, TagImagesRequest

MediaRef = MediaInput

__all__ = ["EmbedImagesReply", "EmbedImagesRequest", "MediaInput", "MediaRef", "TagImagesRequest"]
