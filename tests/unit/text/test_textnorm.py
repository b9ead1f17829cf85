"""Persian normalisation: spellings a reader sees as one text become one string and one dedup key."""

from __future__ import annotations

import pytest

from shared.textnorm import dedup_key, normalize_text
from tests.unit.text.texts import VARIANTS

ZWNJ = "\u200c"


@pytest.mark.parametrize(("raw", "expected"), [
    ("كتاب خوبي بود", "کتاب خوبی بود"),  # Arabic kaf and yeh
    ("مصطفى", "مصطفی"),  # alef maksura
    ("قیمت ١٢٥ هزار تومان", "قیمت ۱۲۵ هزار تومان"),  # Arabic-Indic -> Persian digits in Persian text
    ("قیمت 125 هزار تومان", "قیمت ۱۲۵ هزار تومان"),  # ASCII -> Persian digits in Persian text
    ("battery lasts ۱۲ hours", "battery lasts 12 hours"),  # ASCII digits in a text with no Persian letters
    ("کتابِ خوبـــی است", "کتاب خوبی است"),  # kasra and tatweel
    ("خانۀ ما", "خانه ما"),  # heh with ezafe hamza
    (f"می{ZWNJ}{ZWNJ}خواهم", f"می{ZWNJ}خواهم"),  # repeated ZWNJ
    (f"{ZWNJ}می {ZWNJ}خواهم{ZWNJ} ", "می خواهم"),  # ZWNJ beside spaces or at the ends
    ("  سلام\t\n  دنیا\u00a0!  ", "سلام دنیا !"),  # whitespace runs, no-break space
    ("ﻛﺘﺎﺏ", "کتاب"),  # Arabic presentation forms
    ("سلام\u200fدنیا\u200b", "سلامدنیا"),  # direction marks and zero-width spaces carry nothing
])
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_zwnj_between_letters_is_kept() -> None:
    # "می‌خواهم" and "میخواهم" are different spellings a model may treat differently: only
    # meaningless ZWNJs are removed.
    assert ZWNJ in normalize_text(f"می{ZWNJ}خواهم")


@pytest.mark.parametrize(("canonical", "variant"), VARIANTS)
def test_variants_share_a_dedup_key(canonical: str, variant: str) -> None:
    assert normalize_text(variant) == normalize_text(canonical)
    assert dedup_key(variant) == dedup_key(canonical)


def test_dedup_key_is_sha256_hex_and_tells_texts_apart() -> None:
    key = dedup_key("ارزش خریدنش رو بی شک داره")
    assert len(key) == 64 and int(key, 16) >= 0
    assert key != dedup_key("ارزش خریدنش رو نداره")


def test_normalisation_is_idempotent() -> None:
    for _, variant in VARIANTS:
        once = normalize_text(variant)
        assert normalize_text(once) == once
