"""Tag titles as pseudo-examples (FitConfig.title_examples): what they join, what they never count in, and that
they lift macro-F1 at 4 examples per tag on real e5 embeddings of the Persian and English reviews (bench/quality.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.heads import split
from bench.quality import QTrack, kashf, macro_f1
from bench.quality_reviews_en import REVIEWS
from tests.unit.trainer.reviews import TAGS
from trainer.fitting import FitConfig, Report, fit_head, with_titles

SEEDS = range(500, 510)  # neither bench's tuning splits (0-19) nor its report splits (1000+)


def clusters(n_tags: int = 3, per_tag: int = 6, dim: int = 32, seed: int = 3) -> tuple[np.ndarray, np.ndarray,
                                                                                        np.ndarray]:
    """Unit rows around one centre per tag, the labels and the centres (as the titles' embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_tags, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(n_tags), per_tag)
    x = centres[y] + 0.6 * rng.normal(size=(len(y), dim)) / np.sqrt(dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True), y, centres


def test_titles_join_only_tags_with_a_positive_report() -> None:
    x, y, centres = clusters()
    reports = [Report(i, int(t) + 1, True) for i, t in enumerate(y) if t < 2]
    titles = {t + 1: centres[t] for t in range(3)}
    matrix, got = with_titles(x, reports, [1, 2, 3], titles, FitConfig())
    assert matrix.shape == (len(x) + 2, x.shape[1])
    assert got[len(reports):] == [Report(len(x), 1, True), Report(len(x) + 1, 2, True)]
    np.testing.assert_allclose(matrix[len(x):], centres[:2])
    # Off by the switch, and above title_max_rows reported items.
    assert with_titles(x, reports, [1, 2, 3], titles, FitConfig(title_examples=False))[0] is x
    assert with_titles(x, reports, [1, 2, 3], titles, FitConfig(title_max_rows=len(reports)))[0] is x
    with pytest.raises(ValueError, match="dimensions"):
        with_titles(x, reports, [1, 2, 3], {1: centres[0][:5]}, FitConfig())


def test_titles_shape_the_head_but_never_count_as_reports() -> None:
    x, y, centres = clusters()
    reports = [Report(i, int(t) + 1, True) for i, t in enumerate(y)]
    titles = {t + 1: centres[t] for t in range(3)}
    plain = fit_head(x, reports, [1, 2, 3])
    result = fit_head(x, reports, [1, 2, 3], titles=titles)
    assert result.report_count == len(reports) and result.dim == x.shape[1]
    for fit, before in zip(result.tags, plain.tags, strict=True):
        assert (fit.positives, fit.negatives) == (before.positives, before.negatives) == (6, 12)
        assert fit.counts is not None and fit.counts.tp + fit.counts.fn == 6  # figures from the reports alone
        assert fit.oof_rows is not None and fit.oof_rows.max() < len(x)  # suggestions see real items only
        assert not np.allclose(fit.weights, before.weights)  # the title did join the fit
    off = fit_head(x, reports, [1, 2, 3], FitConfig(title_examples=False), titles)
    for fit, before in zip(off.tags, plain.tags, strict=True):
        np.testing.assert_array_equal(fit.weights, before.weights)


def test_a_lone_tags_prototype_ignores_its_title() -> None:
    x, _, centres = clusters(n_tags=1)
    reports = [Report(i, 1, True) for i in range(len(x))]
    fit = fit_head(x, reports, [1], titles={1: -centres[0]}).tags[0]
    assert fit.method == "prototype"
    np.testing.assert_allclose(fit.weights, x.mean(0) / np.linalg.norm(x.mean(0)))


def test_english_reviews_track_is_six_intents_of_44_distinct_reviews() -> None:
    """The headline English track of bench/quality.py: a duplicate would sit on both sides of a split."""
    assert [len(group) for group in REVIEWS.values()] == [44] * 6
    texts = [" ".join(t.lower().split()) for group in REVIEWS.values() for t in group]
    assert len(set(texts)) == len(texts)
    assert not set(texts) & {" ".join(t.lower().split()) for group in TAGS.values() for t in group}



@pytest.mark.models
def test_titles_lift_macro_f1_at_four_examples_per_tag_on_e5_reviews(reviews: QTrack) -> None:
    assert reviews.titles is not None
    k = len(reviews.titles)
    with_t, without = [], []
    for seed in SEEDS:
        tr, te = split(reviews.y, 4, seed)
        args = (reviews.x[tr], reviews.y[tr], reviews.x[te], k)
        without.append(macro_f1(kashf(*args), reviews.y[te], k))
        with_t.append(macro_f1(kashf(*args, titles=reviews.titles), reviews.y[te], k))
    gain = np.array(with_t) - np.array(without)
    print(f"macro-F1 at 4/tag: titles {np.mean(with_t):.3f}, none {np.mean(without):.3f}, gain {gain.mean():+.3f}")
    assert gain.mean() >= 0.02 and (gain > 0).mean() >= 0.6
