"""The out-of-fold confusion counts a fit stores with its version: the matrix of an exclusive head (true tag
against the answered tag or unknown) and the per-tag counts of a multi-label head."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.bus import Bus
from shared.db.models import HeadVersion
from tests.unit.trainer.helpers import GROUPS, TextModel, seed
from tests.unit.trainer.test_trainer_fit import clusters
from tests.unit.trainer.test_trainer_versions import flip_labels, make_trainer
from trainer.evaluation import exclusive_confusion
from trainer.fitting import FitConfig, Report, fit_head

NONE = "none"  # a row with no true tag, and the "unknown" answer


def test_exclusive_matrix_counts_each_true_tag_against_the_answer_on_a_known_example() -> None:
    order = ["a", "b", NONE]
    # Per row: the true tag, the head's probabilities of a and b, and the answer the rule gives (by hand:
    # the top tag when it reaches 0.5, else unknown).
    rows = [
        ("a", (0.90, 0.05), "a"),
        ("a", (0.30, 0.60), "b"),
        ("a", (0.40, 0.20), NONE),  # top tag under 0.5
        ("a", (0.50, 0.10), "a"),  # exactly 0.5 counts
        ("b", (0.10, 0.80), "b"),
        ("b", (0.55, 0.30), "a"),
        ("b", (0.20, 0.49), NONE),
        (NONE, (0.20, 0.30), NONE),  # reported negative only: unknown is the right answer
        (NONE, (0.70, 0.10), "a"),
    ]
    probs = np.array([p for _, p, _ in rows])
    truth = np.array([[true == "a", true == "b"] for true, _, _ in rows])
    expected = np.zeros((3, 3), dtype=np.int64)
    for true, _, answer in rows:
        expected[order.index(true), order.index(answer)] += 1

    got = exclusive_confusion(probs, truth)
    np.testing.assert_array_equal(got, expected)
    assert got.tolist() == [[2, 1, 1], [1, 1, 1], [1, 0, 1]]
    assert got.sum() == len(rows)


def test_exclusive_matrix_needs_one_true_tag_at_most_and_matching_shapes() -> None:
    assert exclusive_confusion(np.zeros((0, 2)), np.zeros((0, 2), dtype=bool)).tolist() == [[0] * 3] * 3
    with pytest.raises(ValueError, match="at most one true tag"):
        exclusive_confusion(np.array([[0.9, 0.1]]), np.array([[True, True]]))
    with pytest.raises(ValueError, match="shape"):
        exclusive_confusion(np.array([[0.9, 0.1]]), np.array([[True]]))


def test_an_exclusive_fit_stores_a_matrix_that_agrees_with_its_per_tag_counts() -> None:
    x, groups, centres = clusters([8, 8, 8], noise=1.4)
    reports = [Report(i, 10 + int(g), True) for i, g in enumerate(groups)]
    # Two items reported as "not tag 10" only: their true answer is unknown (the matrix's last row).
    x = np.vstack([x, -centres[:1], -centres[1:2]])
    reports += [Report(24, 10, False), Report(25, 10, False)]
    # A title per tag joins the fit as an example, never the figures: the matrix counts the 26 items only.
    titles = {10 + t: centres[t] for t in range(3)}
    result = fit_head(x, reports, [10, 11, 12], FitConfig(cv_folds=4), titles=titles)
    assert result.exclusive
    confusion = result.confusion()
    assert confusion is not None and confusion["exclusive"] and confusion["tag_ids"] == [10, 11, 12]
    matrix = np.array(confusion["matrix"])
    assert matrix.shape == (4, 4) and matrix.sum() == 26
    assert matrix[3].sum() == 2 and matrix[:3].sum(axis=1).tolist() == [8, 8, 8]
    for i, fit in enumerate(result.tags):
        assert fit.counts is not None
        # Each tag's own counts are the same out-of-fold answers: its hits, and its misses along its row.
        assert matrix[i, i] == fit.counts.tp
        assert matrix[i].sum() - matrix[i, i] == fit.counts.fn
    # Noisy clusters: cross-validation is not perfect, so some answers land off the diagonal.
    assert np.trace(matrix) < 26


def test_a_multi_label_fit_stores_each_tags_counts_and_null_for_a_tag_it_could_not_evaluate() -> None:
    x, groups, _ = clusters([6, 6, 1])
    both = x[groups == 0][:3] + x[groups == 1][:3]
    x = np.concatenate([x, both / np.linalg.norm(both, axis=1, keepdims=True)])
    reports = [Report(i, 10 + int(g), True) for i, g in enumerate(groups)]
    reports += [Report(13 + i, tag, True) for i in range(3) for tag in (10, 11)]  # items with two tags
    result = fit_head(x, reports, [10, 11, 12, 13])
    assert not result.exclusive
    confusion = result.confusion()
    assert confusion is not None and not confusion["exclusive"] and "matrix" not in confusion
    assert confusion["tag_ids"] == [10, 11, 12]  # tag 13 has no positive report: not in the head
    by_tag = dict(zip(confusion["tag_ids"], confusion["counts"], strict=True))
    assert by_tag[12] is None  # one positive: too few to cross-validate
    for fit in result.tags[:2]:
        counts = by_tag[fit.tag_id]
        assert fit.counts is not None and counts == {"tp": fit.counts.tp, "fp": fit.counts.fp,
                                                     "fn": fit.counts.fn, "tn": fit.counts.tn}
        # Every reported item is counted once per tag: 6 + 6 + 1 + 3 (the last ones implicit negatives or not).
        assert sum(counts.values()) == 16
        assert counts["tp"] + counts["fn"] == 9  # 6 single-tag items and the 3 with both tags


def test_nothing_evaluated_stores_no_counts() -> None:
    x, groups, _ = clusters([1, 1])  # one example per tag: no fold can hold one out
    result = fit_head(x, [Report(i, 10 + int(g), True) for i, g in enumerate(groups)], [10, 11])
    assert result.confusion() is None


async def test_each_stored_version_keeps_its_own_counts(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], text_model: TextModel,
) -> None:
    trainer = make_trainer(bus, sessions)
    dataset_id, tags = await seed(sessions, per_group=6)  # 18 items, three of them with an explicit negative
    first = await trainer.refit(dataset_id)
    assert first.state == "trained" and first.result is not None and first.result.exclusive
    await flip_labels(sessions, dataset_id, tags["sport"], 4)  # 4 sport items now belong to no tag
    second = await trainer.refit(dataset_id, force=True)
    assert second.state == "trained" and second.result is not None
    async with sessions() as s:
        rows = {v.version: v.confusion for v in await s.scalars(
            select(HeadVersion).where(HeadVersion.dataset_id == dataset_id))}
    assert rows == {1: first.result.confusion(), 2: second.result.confusion()}
    order = [tags[g] for g in GROUPS]
    for version, sport_items, no_tag in ((1, 6, 0), (2, 2, 4)):
        stored = rows[version]
        assert stored is not None and stored["exclusive"] and stored["tag_ids"] == order
        matrix = np.array(stored["matrix"])
        # The reported items only (the titles' pseudo-examples are not counted), by their true tag.
        assert matrix.sum() == 18
        assert matrix.sum(axis=1).tolist() == [sport_items, 6, 6, no_tag]
