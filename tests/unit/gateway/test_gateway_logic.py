"""Pure logic of the gateway: text identity (shared.textnorm, as the model sees text),
probability printing, rate buckets, error sentences."""

from __future__ import annotations

import pytest

from gateway.http_errors import validation_detail
from gateway.infra.ratelimit import RateLimiter
from gateway.service.auth import hash_token, new_token, parse_authorization
from gateway.service.reports import compact_labels
from gateway.service.tagging import probability
from shared.errors import RateLimited, Unauthorized
from shared.textnorm import dedup_key, normalize_text


def test_persian_spellings_of_one_text_share_an_identity() -> None:
    persian = "پیشنهاد می‌کنم، کیفیتش عالیه"
    variants = [
        "پيشنهاد می‌کنم، کيفيتش عاليه",  # Arabic yeh
        "پیشنهاد می‌كنم، كیفیتش عالیه",  # Arabic kaf
        "  پیشنهاد   می‌کنم،\tکیفیتش عالیه\n",  # spacing
        "ﭘﻴﺸﻨﻬﺎﺩ می‌کنم، کیفیتش عالیه",  # presentation forms, folded by NFKC
    ]
    assert all(dedup_key(v) == dedup_key(persian) for v in variants)
    assert normalize_text(variants[2]) == persian
    # The zero-width non-joiner is part of Persian spelling: it is kept.
    assert dedup_key("می‌کنم") != dedup_key("میکنم")
    assert dedup_key("خوب") != dedup_key("بد")


def test_probabilities_print_like_the_reference() -> None:
    assert probability(0.996) == 1 and isinstance(probability(0.996), int)
    assert probability(0.994) == 0.99
    assert probability(1.0) == 1 and isinstance(probability(1.0), int)
    assert probability(0.5) == 0.5


def test_report_string_is_compact_json() -> None:
    assert compact_labels([(39, True)]) == "[[39,true]]"
    assert compact_labels([(3, True), (7, False)]) == "[[3,true],[7,false]]"


def test_token_bucket_allows_bursts_then_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    limiter.check(1)
    limiter.check(1)
    with pytest.raises(RateLimited):
        limiter.check(1)
    limiter.check(2)  # another account has its own bucket
    now[0] = 1.0  # one token per second back
    limiter.check(1)
    with pytest.raises(RateLimited):
        limiter.check(1)
    assert RateLimiter(per_minute=0, burst=0).check(1) is None  # 0 disables


def test_tokens_are_peppered_and_headers_parsed() -> None:
    assert hash_token("abc", "p1") != hash_token("abc", "p2")
    assert len(hash_token("abc", "p1")) == 64
    assert parse_authorization("Token abc123") == "abc123"
    assert parse_authorization("token   abc123 ") == "abc123"
    for bad in (None, "", "Bearer abc", "Token", "abc"):
        with pytest.raises(Unauthorized):
            parse_authorization(bad)


def test_new_tokens_never_start_with_a_dash() -> None:
    # A prefix like "-x3Fq..." would reach `kashf-admin revoke-token` as an option; 1 token in 64 did.
    tokens = [new_token() for _ in range(2000)]
    assert not any(t.startswith("-") for t in tokens)
    assert all(len(t) == 43 for t in tokens) and len(set(tokens)) == len(tokens)


def test_validation_sentences_name_the_field() -> None:
    errors = [{"type": "int_parsing", "loc": ("body", 2, "tag_id"), "msg": "Input should be a valid integer"}]
    assert validation_detail(errors) == ("invalid", "[2].tag_id: Input should be a valid integer")
    nested = [{"type": "missing", "loc": ("body", "contents"), "msg": "Field required"}, errors[0]]
    assert validation_detail(nested) == ("invalid", "contents: Field required (and 1 more)")
    bad_json = [
        {
            "type": "json_invalid",
            "loc": ("body", 12),
            "msg": "JSON decode error",
            "ctx": {"error": "Expecting value"},
        }
    ]
    assert validation_detail(bad_json) == (
        "invalid_json",
        "request body is not valid JSON: Expecting value at position 12",
    )


def test_long_text_batches_are_split_below_the_bus_payload_limit() -> None:
    from gateway.service.tagging import _MAX_TEXT_BYTES_PER_REQUEST, _chunks

    texts = [f"متن شماره {i} " + "خیلی خوب بود " * 300 for i in range(256)]
    chunks = _chunks(texts)
    assert len(chunks) > 1
    assert [t for chunk in chunks for t in chunk] == texts  # order kept
    assert all(sum(2 * len(t.encode()) + 8 for t in chunk) <= _MAX_TEXT_BYTES_PER_REQUEST for chunk in chunks)
    assert _chunks(["کوتاه"]) == [["کوتاه"]]
