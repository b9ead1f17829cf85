"""bench/quality.py's embedding maps (``+demean``, ``+whiten``): how a name parses, what the map does to the rows,
and which rows its statistics come from."""

from __future__ import annotations

import numpy as np
import pytest

from bench.quality import QTrack, Transform, applies, parse_transformed, reference, transformed


def correlated(n: int = 400, dim: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)) + 3.0


def test_names_parse_into_base_method_and_map() -> None:
    assert parse_transformed("+whiten", 0.1) == ("ours", Transform(True, 0.1, False, False))
    assert parse_transformed("+title+whiten@train=0.03+norm", 0.1) == ("+title", Transform(True, 0.03, True, True))
    # Minus the mean alone is unit again: without it the head, which centres the items itself, would not change.
    assert parse_transformed("LR+demean", 0.1) == ("LR", Transform(False, 0.1, True, False))
    assert parse_transformed("+stretch@train+norm", 0.1) == ("ours", Transform(True, 0.0, True, True, 0.5))
    assert parse_transformed("+title+stretch=0.5", 0.1) == ("+title", Transform(True, 0.0, False, False, 0.25))
    for other in ("ours", "+title", "+flip+centre", "+ngrams", "+whiten+title"):
        assert parse_transformed(other, 0.1) is None


def test_whitening_gives_unit_covariance_and_shrinkage_tends_to_centring() -> None:
    x = correlated()
    t = Transform(True, 1e-9, False, False)
    z = t.apply(x, *t.fit(x))
    assert np.allclose(z.mean(axis=0), 0.0, atol=1e-9)
    assert np.allclose(np.cov(z.T, bias=True), np.eye(x.shape[1]), atol=1e-6)
    # A large lambda scales every direction alike: the centred rows, up to one factor.
    big = Transform(True, 1e6, False, False)
    centred = x - x.mean(axis=0)
    w = big.apply(x, *big.fit(x))
    factor = np.linalg.norm(w) / np.linalg.norm(centred)
    assert np.allclose(w, factor * centred, atol=1e-6 * np.abs(w).max())


def test_stretching_scales_each_principal_direction_by_a_power_of_its_variance() -> None:
    x = correlated()
    cov = np.cov(x.T, bias=True)
    mean_value = np.trace(cov) / len(cov)
    t = Transform(True, 0.0, False, False, 0.5)  # +stretch=1: Cov^1/2 on the centred rows, Cov^2 after
    z = t.apply(x, *t.fit(x))
    assert np.allclose(np.cov(z.T, bias=True), cov @ cov / mean_value, atol=1e-8 * np.abs(cov @ cov).max())


def test_demean_and_norm_give_unit_rows() -> None:
    x = correlated()
    for t in (Transform(False, 0.1, True, False), Transform(True, 0.1, True, False)):
        assert np.allclose(np.linalg.norm(t.apply(x, *t.fit(x)), axis=1), 1.0)


@pytest.mark.parametrize("train_only", [False, True])
def test_the_map_uses_the_tracks_or_the_splits_statistics_and_maps_the_titles(train_only: bool) -> None:
    x = correlated(40, 4)
    titles = correlated(3, 4, seed=1)
    track = QTrack("t", x, np.arange(40) % 3, ["a"] * 40, titles, "m@1")
    seen: list[QTrack] = []

    def base(t: QTrack, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        seen.append(t)
        return np.zeros(len(te), dtype=int)

    tr, te = np.arange(12), np.arange(12, 40)
    transform = Transform(True, 0.1, False, train_only)
    transformed(base, transform)(track, tr, te)
    stats = transform.fit(x[tr] if train_only else x)
    assert np.allclose(seen[0].x, transform.apply(x, *stats))
    assert seen[0].titles is not None and np.allclose(seen[0].titles, transform.apply(titles, *stats))
    assert np.array_equal(seen[0].y, track.y)


def test_maps_apply_where_their_base_does_and_compare_with_it() -> None:
    text = QTrack("t", np.eye(2), np.arange(2), ["a", "b"], np.eye(2), "m@1")
    photos = QTrack("p", np.eye(2), np.arange(2), None, None, "m@1")
    assert applies(photos, "+whiten") and applies(photos, "LR+demean") and not applies(photos, "+title+whiten")
    assert applies(text, "+title+whiten")
    names = ["LR", "ours", "+title", "+title+whiten", "+whiten", "LR+whiten"]
    assert [reference(m, names) for m in names] == [None, None, "ours", "+title", "ours", None]
