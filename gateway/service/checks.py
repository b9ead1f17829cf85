"""Request limits that are settings: answered 413 naming the setting (400 for an empty list)."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.schemas import MediaItem
from shared.errors import BadRequest, TooLarge
from shared.settings import GatewaySettings


def check_count(items: Sequence[object], what: str, settings: GatewaySettings) -> None:
    if not items:
        raise BadRequest(f"{what} is empty: send at least one", code="empty_list")
    if len(items) > settings.max_items:
        raise TooLarge(
            f"{what} has {len(items)} items, over the limit of {settings.max_items} (KASHF_MAX_ITEMS)"
        )


def check_media_count(items: Sequence[MediaItem], kind: str, settings: GatewaySettings) -> None:
    """Errors name the list as sent: ``image_urls`` for URLs, ``image_file`` for uploads."""
    uploaded = bool(items) and items[0].uploaded
    check_count(items, f"{kind}_file" if uploaded else f"{kind}_urls", settings)


def check_text(text: str, where: str, settings: GatewaySettings) -> None:
    if len(text) > settings.max_text_chars:
        raise TooLarge(
            f"{where} has {len(text)} characters, over the limit of {settings.max_text_chars} "
            f"(KASHF_MAX_TEXT_CHARS)"
        )
