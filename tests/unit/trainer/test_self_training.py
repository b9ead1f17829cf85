"""Self-training on the unlabelled pool (trainer.selftraining): which pool items become pseudo-examples, that they
shape the classifier but never the figures, when the fit leaves the pool alone, the refit reading the kept inputs
(and counting them among its inputs), and the lift on real e5 embeddings of the reviews (bench/quality.py --pool).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bench.heads import split
from bench.quality import QTrack, kashf, macro_f1, pool_split
from modelkit.heads import Head
from shared.bus import Bus
from shared.db.models import DataItem, Embedding, HeadVersion
from shared.db.models import Report as StoredReport
from shared.settings import TrainerSettings
from tests.unit.trainer.helpers import TextModel, seed
from tests.unit.trainer.test_quality_titles import clusters
from trainer.embedder import BusEmbedder
from trainer.fitting import FitConfig, Report, fit_head
from trainer.heads import ObjectStoreHeads
from trainer.main import fit_config
from trainer.selftraining import pseudo_labels
from trainer.service import Trainer

SEEDS = range(500, 510)  # neither bench's tuning splits (0-19) nor its report splits (1000+)


def two_tag_head(none_logit: float = -4.0) -> Head:
    """An exclusive head on 2-d vectors: tag 1 along +x, tag 2 along +y (calibration: the raw score)."""
    return Head(model_id="m", version=1, tag_ids=np.array([1, 2]), weights=np.eye(2, dtype=np.float32),
                bias=np.zeros(2, dtype=np.float32), calibration=np.array([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32),
                thresholds=np.full(2, 0.5, dtype=np.float32), exclusive=True, none_logit=none_logit)


def test_each_tag_takes_its_most_confident_share_of_the_pool_items_it_answers() -> None:
    # Tag 1 answers 8 items, margins 1..8; tag 2 answers 4, margins 1..4.
    pool = np.array([[m, 0.0] for m in range(1, 9)] + [[0.0, m] for m in range(1, 5)], dtype=np.float32)
    rows, columns = pseudo_labels(two_tag_head(), pool, np.array([10, 10]), FitConfig(self_fraction=0.5))
    assert sorted(zip(rows.tolist(), columns.tolist(), strict=True)) == [
        (4, 0), (5, 0), (6, 0), (7, 0), (10, 1), (11, 1)]  # the top half of each: the largest margins
    # At most self_cap x the tag's reported positives.
    rows, columns = pseudo_labels(two_tag_head(), pool, np.array([1, 1]), FitConfig(self_fraction=1.0, self_cap=2.0))
    assert sorted(zip(rows.tolist(), columns.tolist(), strict=True)) == [(6, 0), (7, 0), (10, 1), (11, 1)]


def test_pool_items_the_head_answers_unknown_for_are_never_taken() -> None:
    pool = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 0.5]], dtype=np.float32)
    # With the none logit at 2, only the item of margin 3 is answered (the others are "unknown").
    rows, columns = pseudo_labels(two_tag_head(none_logit=2.0), pool, np.array([5, 5]), FitConfig(self_fraction=1.0))
    assert rows.tolist() == [1] and columns.tolist() == [0]


def test_pseudo_examples_shape_the_classifier_but_never_the_figures() -> None:
    x, y, _ = clusters(per_tag=6)
    pool, _, _ = clusters(per_tag=10, seed=3)  # more items around the same centres, unlabelled
    reports = [Report(i, int(t) + 1, True) for i, t in enumerate(y)]
    plain = fit_head(x, reports, [1, 2, 3])
    result = fit_head(x, reports, [1, 2, 3], pool=pool)
    assert plain.exclusive and result.exclusive and plain.pseudo_labels == 0
    assert 0 < result.pseudo_labels <= int(0.75 * len(pool)) + 3
    assert result.report_count == len(reports)
    np.testing.assert_array_equal(result.matrix, plain.matrix)  # the confusion matrix: the first fit's
    for fit, before in zip(result.tags, plain.tags, strict=True):
        assert (fit.positives, fit.negatives, fit.counts, fit.threshold) == (
            before.positives, before.negatives, before.counts, before.threshold)
        np.testing.assert_array_equal(fit.oof_rows, before.oof_rows)  # suspects: reported items only
        np.testing.assert_array_equal(fit.oof_probabilities, before.oof_probabilities)
        assert not np.allclose(fit.weights, before.weights)  # the pseudo-examples did join the fit


def test_the_pool_is_left_alone_off_the_few_shot_exclusive_case() -> None:
    x, y, _ = clusters(per_tag=6)
    pool, _, _ = clusters(per_tag=10, seed=3)
    reports = [Report(i, int(t) + 1, True) for i, t in enumerate(y)]
    plain = fit_head(x, reports, [1, 2, 3])
    multi = [*reports, Report(0, 2, True)]  # one item of two tags: a multi-label head, no pseudo-labels
    cases = {
        "switched off": (reports, FitConfig(self_training=False)),
        "too many reports": (reports, FitConfig(self_max_rows=len(x))),
        "multi-label": (multi, FitConfig()),
    }
    for name, (labels, config) in cases.items():
        result = fit_head(x, labels, [1, 2, 3], config, pool=pool)
        assert result.pseudo_labels == 0, name
        if labels is reports:
            for fit, before in zip(result.tags, plain.tags, strict=True):
                np.testing.assert_array_equal(fit.weights, before.weights)
    assert fit_head(x, reports, [1, 2, 3], pool=pool[:0]).pseudo_labels == 0  # an empty pool


def test_the_environment_turns_self_training_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert fit_config(TrainerSettings()).self_training
    monkeypatch.setenv("KASHF_SELF_TRAINING", "false")
    assert fit_config(TrainerSettings()).self_training is False


async def add_inputs(sessions: async_sessionmaker[AsyncSession], dataset_id: int, texts: list[str]) -> None:
    async with sessions.begin() as s:
        s.add_all(DataItem(dataset_id=dataset_id, kind="text", content=t, origin="input",
                           content_hash=hashlib.sha256(t.encode()).hexdigest()) for t in texts)


async def test_a_refit_embeds_the_kept_inputs_self_trains_on_them_and_fits_again_when_more_come(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], text_model: TextModel
) -> None:
    trainer = Trainer(sessions, BusEmbedder(bus), ObjectStoreHeads(bus.js), config=FitConfig(cv_folds=3))
    dataset_id, _ = await seed(sessions)
    await add_inputs(sessions, dataset_id, [f"{g} kept input {i}" for g in ("sport", "food") for i in range(6)])
    first = await trainer.refit(dataset_id)
    assert first.state == "trained" and first.result is not None
    assert first.result.pseudo_labels > 0
    async with sessions() as s:  # the pool was embedded for the fit, and the version says how many it took
        assert len((await s.execute(Embedding.__table__.select())).all()) == 15 + 12
        stored = await s.scalar(select(HeadVersion.pseudo_labels).where(HeadVersion.dataset_id == dataset_id))
    assert stored == first.result.pseudo_labels
    assert (await trainer.refit(dataset_id)).state == "unchanged"
    await add_inputs(sessions, dataset_id, ["music kept input 0"])  # a new kept input is a new input of the fit
    again = await trainer.refit(dataset_id)
    assert again.state == "trained" and again.version == first.version + 1

    plain = Trainer(sessions, BusEmbedder(bus), ObjectStoreHeads(bus.js),
                    config=FitConfig(cv_folds=3, self_training=False))
    off = await plain.refit(dataset_id, force=True)
    assert off.result is not None and off.result.pseudo_labels == 0


async def test_a_multi_label_dataset_leaves_its_kept_inputs_out_of_the_fit_and_its_inputs(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], text_model: TextModel
) -> None:
    trainer = Trainer(sessions, BusEmbedder(bus), ObjectStoreHeads(bus.js), config=FitConfig(cv_folds=3))
    dataset_id, tags = await seed(sessions)
    async with sessions.begin() as s:  # one item of two tags: the head is multi-label
        item = (await s.scalars(select(DataItem).where(DataItem.dataset_id == dataset_id,
                                                        DataItem.content == "sport sentence number 1"))).one()
        s.add(StoredReport(dataset_id=dataset_id, item_id=item.id, tag_id=tags["music"], positive=True))
    await add_inputs(sessions, dataset_id, [f"{g} kept input {i}" for g in ("sport", "food") for i in range(6)])
    first = await trainer.refit(dataset_id)
    assert first.result is not None and not first.result.exclusive and first.result.pseudo_labels == 0
    await add_inputs(sessions, dataset_id, ["music kept input 0"])
    assert (await trainer.refit(dataset_id)).state == "unchanged"  # the pool is no input of its fit



@pytest.mark.models
def test_a_pool_lifts_macro_f1_at_four_examples_per_tag_on_e5_reviews(reviews: QTrack) -> None:
    """The pool is half the held-out reviews, the queries the other half: the pool never holds a query."""
    assert reviews.titles is not None
    k = len(reviews.titles)
    pooled, alone = [], []
    for seed_ in SEEDS:
        tr, te = split(reviews.y, 4, seed_)
        pool, queries = pool_split(te, seed_)
        args = (reviews.x[tr], reviews.y[tr], reviews.x[queries], k)
        alone.append(macro_f1(kashf(*args, titles=reviews.titles), reviews.y[queries], k))
        pooled.append(macro_f1(kashf(*args, titles=reviews.titles, pool=reviews.x[pool]), reviews.y[queries], k))
    gain = np.array(pooled) - np.array(alone)
    print(f"macro-F1 at 4/tag with titles: pool {np.mean(pooled):.3f}, none {np.mean(alone):.3f}, "
          f"gain {gain.mean():+.3f}")
    assert gain.mean() >= 0.02 and (gain > 0).mean() >= 0.6
