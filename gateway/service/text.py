"""Text identity: two spellings of one Persian text are one data item."""

from __future__ import annotations

import hashlib
import unicodedata

# Arabic letters that Persian keyboards and old texts use in place of the Persian ones.
_TO_PERSIAN = str.maketrans({"ي": "ی", "ى": "ی", "ك": "ک"})


def normalise(text: str) -> str:
    """NFKC, Persian ی/ک for the Arabic forms, whitespace stripped and collapsed to single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text).translate(_TO_PERSIAN).split())


def text_hash(text: str) -> str:
    """Hex SHA-256 of the normalised text: the item's identity within a dataset."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


