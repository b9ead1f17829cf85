"""tag_vectors' choice of tags per item: threshold overrides (head and zero-shot tags), top_k, min_probability."""

from __future__ import annotations

import numpy as np

from modelkit.heads import Head, tag_vectors
from shared.schemas.inference import UNKNOWN_TAG_ID, ScoredTag, TagRef


def _head() -> Head:
    """Three tags whose probabilities on the unit vector e0 are about 0.9, 0.6 and 0.3; thresholds 0.5 each."""
    logits = np.log(np.array([0.9, 0.6, 0.3]) / (1 - np.array([0.9, 0.6, 0.3])))
    weights = np.zeros((3, 2), dtype=np.float32)
    weights[:, 0] = logits
    return Head(model_id="m", version=1, tag_ids=np.array([1, 2, 3], dtype=np.int64), weights=weights,
                bias=np.zeros(3, dtype=np.float32), calibration=np.tile([1.0, 0.0], (3, 1)).astype(np.float32),
                thresholds=np.full(3, 0.5, dtype=np.float32))


X = np.array([[1.0, 0.0]], dtype=np.float32)
TAGS = [TagRef(id=1, title="a"), TagRef(id=2, title="b"), TagRef(id=3, title="c")]


def ids(rows: list[list[ScoredTag]]) -> list[list[int]]:
    return [[t.id for t in row] for row in rows]


def test_the_learned_thresholds_decide_by_default() -> None:
    rows = tag_vectors(_head(), X, TAGS)
    assert ids(rows) == [[1, 2]]
    assert [t.probability for t in rows[0]] == [0.9, 0.6]


def test_an_override_replaces_the_learned_threshold_either_way() -> None:
    tags = [TagRef(id=1, title="a", threshold=0.95), TagRef(id=2, title="b"), TagRef(id=3, title="c", threshold=0.2)]
    assert ids(tag_vectors(_head(), X, tags)) == [[2, 3]]


def test_top_k_keeps_the_most_probable_tags() -> None:
    assert ids(tag_vectors(_head(), X, TAGS, top_k=1)) == [[1]]
    assert ids(tag_vectors(_head(), X, TAGS, top_k=5)) == [[1, 2]]


def test_min_probability_replaces_every_threshold_for_the_call() -> None:
    tags = [TagRef(id=1, title="a", threshold=0.95), TagRef(id=2, title="b"), TagRef(id=3, title="c")]
    assert ids(tag_vectors(_head(), X, tags, min_probability=0.25)) == [[1, 2, 3]]
    assert ids(tag_vectors(_head(), X, tags, min_probability=0.25, top_k=2)) == [[1, 2]]
    assert ids(tag_vectors(_head(), X, tags, min_probability=0.95)) == [[UNKNOWN_TAG_ID]]


def test_a_tag_nothing_can_score_never_passes_even_at_min_probability_zero() -> None:
    tags = [*TAGS, TagRef(id=4, title="new", threshold=0.1)]
    assert ids(tag_vectors(_head(), X, tags, min_probability=0.0)) == [[1, 2, 3]]
    assert ids(tag_vectors(None, X, tags, min_probability=0.0)) == [[UNKNOWN_TAG_ID]]


def test_zero_shot_tags_take_the_override_and_min_probability_too() -> None:
    tags = [TagRef(id=7, title="x"), TagRef(id=8, title="y", threshold=0.3)]
    zero_shot = np.array([[0.45, 0.4]])
    assert ids(tag_vectors(None, X, tags, zero_shot)) == [[8]]  # 0.45 < 0.5 default; 0.4 >= 0.3 override
    assert ids(tag_vectors(None, X, tags, zero_shot, min_probability=0.42)) == [[7]]
