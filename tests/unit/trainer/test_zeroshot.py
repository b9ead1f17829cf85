"""The zero-shot head (trainer.zeroshot): tag titles alone make an ordinary exclusive head whose answer is the
nearest title, with p = sigmoid(scale x min(cosine lead over the second title, cosine - floor)), and unknown
below the floor; it survives the blob format the services load."""

from __future__ import annotations

import numpy as np
import pytest

from modelkit.heads import Head, sigmoid, tag_vectors
from shared.schemas.inference import UNKNOWN_TAG_ID, TagRef
from trainer.fitresult import FitConfig, NothingToFit
from trainer.zeroshot import THRESHOLD, zero_shot_fit

DIM = 16


def unit(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = v / np.linalg.norm(v, axis=-1, keepdims=True)
    return out


def titles(n: int = 3, seed: int = 1) -> dict[int, np.ndarray]:
    """Title embeddings of tags 11, 12, ... sharing a common direction, as e5's do (cosines near 0.8)."""
    rng = np.random.default_rng(seed)
    common = unit(rng.normal(size=DIM))
    return {11 + i: unit(2.0 * common + unit(rng.normal(size=DIM))) for i in range(n)}


def refs(ids: list[int]) -> list[TagRef]:
    return [TagRef(id=t, title=f"tag {t}") for t in ids]


def test_the_head_holds_the_unit_titles_and_the_settings() -> None:
    config = FitConfig(zero_shot_scale=50.0, zero_shot_floor=0.7)
    by_tag = {t: 3.0 * v for t, v in titles().items()}  # any length: the head keeps the direction
    result = zero_shot_fit(by_tag, [11, 12, 13], config)
    assert result.mode == "zero_shot" and result.zero_shot and result.exclusive and result.none_logit == 0.0
    assert result.report_count == 0 and result.dataset_evaluation() == {"recall": None, "precision": None, "f1": None}
    head = result.head("m", 4)
    assert head.tag_ids.tolist() == [11, 12, 13] and head.exclusive
    np.testing.assert_allclose(head.weights, np.stack([unit(v) for v in by_tag.values()]), atol=1e-6)
    np.testing.assert_allclose(head.bias, -0.7, atol=1e-6)
    np.testing.assert_allclose(head.calibration, [[50.0, 0.0]] * 3)
    np.testing.assert_allclose(head.thresholds, THRESHOLD)
    assert {t.method for t in result.tags} == {"zero_shot"} and all(t.counts is None for t in result.tags)


def test_the_nearest_title_wins_with_the_margin_as_its_probability() -> None:
    by_tag = titles()
    config = FitConfig()
    head = Head.from_bytes(zero_shot_fit(by_tag, list(by_tag), config).head("m", 1).to_bytes())
    t = np.stack(list(by_tag.values()))
    rng = np.random.default_rng(7)
    x = unit(t[[0, 1, 2, 0]] + 0.15 * rng.normal(size=(4, DIM)))  # texts near titles 11, 12, 13, 11
    cos = x @ t.T
    rows = tag_vectors(head, x, refs(list(by_tag)))
    assert [r[0].id for r in rows] == [11 + int(i) for i in cos.argmax(1)] == [11, 12, 13, 11]
    ordered = np.sort(cos, axis=1)
    want = sigmoid(config.zero_shot_scale * np.minimum(ordered[:, -1] - ordered[:, -2],
                                                       ordered[:, -1] - config.zero_shot_floor))
    np.testing.assert_allclose(head.probabilities(x).max(axis=1), want, rtol=1e-4)
    assert [len(r) for r in rows] == [1, 1, 1, 1]  # exclusive: one tag per text
    assert all(r[0].probability == round(float(p), 2) for r, p in zip(rows, want, strict=True))


def test_a_text_far_from_every_title_is_unknown() -> None:
    by_tag = titles()
    head = zero_shot_fit(by_tag, list(by_tag)).head("m", 1)
    t = np.stack(list(by_tag.values()))
    far = unit(np.linalg.svd(t)[2][-1])  # orthogonal to every title: cosine 0, below the floor
    near = unit(t[1] + 0.05 * far)
    rows = tag_vectors(head, np.stack([far, near]), refs(list(by_tag)))
    assert rows[0][0].id == UNKNOWN_TAG_ID and rows[1][0].id == 12
    # A threshold override or min_probability applies to zero-shot tags as to trained ones.
    assert tag_vectors(head, near[None], refs(list(by_tag)), min_probability=1.0)[0][0].id == UNKNOWN_TAG_ID


def test_every_listed_tag_competes_and_a_missing_title_is_skipped() -> None:
    by_tag = titles(3)
    result = zero_shot_fit({11: by_tag[11], 13: by_tag[13]}, [11, 12, 13])
    assert [t.tag_id for t in result.tags] == [11, 13] and result.skipped == [12]
    # An inactive tag stays in the head (as in a trained one): a text nearest to it is no other tag's.
    head = zero_shot_fit(by_tag, [11, 12, 13]).head("m", 1)
    rows = tag_vectors(head, by_tag[12][None], refs([11, 13]))
    assert rows[0][0].id == UNKNOWN_TAG_ID


def test_fewer_than_two_titles_make_no_head() -> None:
    by_tag = titles(2)
    with pytest.raises(NothingToFit, match="at least 2 tags"):
        zero_shot_fit({11: by_tag[11]}, [11])
    with pytest.raises(NothingToFit, match="at least 2 tags"):
        zero_shot_fit(by_tag, [11, 99])
    with pytest.raises(NothingToFit, match="empty"):
        zero_shot_fit({11: by_tag[11], 12: np.zeros(DIM)}, [11, 12])
