"""suggest_labels' trainer side: diverse uncertain picks, suspects from out-of-fold scores, rows replaced per fit."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.bus import Bus
from shared.db.models import DataItem, Embedding, Report, Suggestion
from tests.unit.trainer.helpers import TextModel, seed
from trainer.embedder import BusEmbedder
from trainer.fitting import FitConfig, fit_head
from trainer.fitting import Report as FitReport
from trainer.heads import ObjectStoreHeads
from trainer.repository import ItemToEmbed
from trainer.service import Trainer
from trainer.suggestions import SuggestConfig, rank_suspects, select_uncertain, unit


def near_duplicates(rng: np.random.Generator, centres: int, copies: int, dim: int = 32) -> np.ndarray:
    """``centres`` directions, each repeated ``copies`` times with a little noise (cosine ~0.99 within)."""
    base = unit(rng.normal(size=(centres, dim)))
    return unit(np.repeat(base, copies, axis=0) + 0.02 * rng.normal(size=(centres * copies, dim)))


def test_no_two_uncertain_picks_are_closer_than_the_cosine_setting() -> None:
    rng = np.random.default_rng(0)
    x = near_duplicates(rng, centres=30, copies=8)
    # The near-duplicates of one centre are all about equally uncertain: plain uncertainty would pick them.
    probs = np.clip(0.5 + 0.01 * np.repeat(np.arange(30), 8)[:, None] + 0.001 * rng.normal(size=(240, 2)), 0, 1)
    eligible = np.ones_like(probs, dtype=bool)
    thresholds = np.array([0.5, 0.5])
    most_uncertain = np.argsort(np.abs(probs[:, 0] - 0.5))[:10]
    sims = x[most_uncertain] @ x[most_uncertain].T
    assert sims[~np.eye(10, dtype=bool)].max() > 0.95  # the test would catch a plain uncertainty ranking

    picks = select_uncertain(x, probs, thresholds, eligible, limit=20, max_cosine=0.95)
    assert len(picks) == 20
    rows = [p.row for p in picks]
    assert len(set(rows)) == len(rows)
    cos = x[rows] @ x[rows].T
    assert cos[~np.eye(len(rows), dtype=bool)].max() <= 0.95
    # Still near the threshold: every pick is among the band of the most uncertain centres.
    assert max(abs(p.probability - 0.5) for p in picks) < 0.25


def test_ineligible_rows_are_never_picked() -> None:
    rng = np.random.default_rng(1)
    x = unit(rng.normal(size=(50, 16)))
    probs = np.full((50, 1), 0.5)
    eligible = np.zeros((50, 1), dtype=bool)
    eligible[40:] = True
    picks = select_uncertain(x, probs, np.array([0.5]), eligible, limit=30, max_cosine=0.95)
    assert sorted(p.row for p in picks) == list(range(40, 50))


def test_suspects_rank_flipped_labels_first() -> None:
    """Three well separated groups, 10% of the labels flipped to another tag: the flipped ones lead."""
    rng = np.random.default_rng(2)
    dim, per_tag, tags = 32, 30, (11, 12, 13)
    centres = unit(rng.normal(size=(3, dim)))
    x = unit(np.repeat(centres, per_tag, axis=0) + 0.15 * rng.normal(size=(3 * per_tag, dim)))
    truth = np.repeat(np.arange(3), per_tag)
    flipped = rng.choice(len(truth), size=len(truth) // 10, replace=False)
    given = truth.copy()
    given[flipped] = (truth[flipped] + 1) % 3
    result = fit_head(x, [FitReport(i, tags[g], True) for i, g in enumerate(given)], list(tags),
                      FitConfig(cv_folds=5))
    rows, probs, positive = [], [], []
    for fit in result.tags:
        assert fit.oof_rows is not None and fit.oof_probabilities is not None
        for row, p in zip(fit.oof_rows, fit.oof_probabilities, strict=True):
            rows.append(int(row))
            probs.append(float(p))
            positive.append(True)  # only positive reports here: each row once
    order, contradiction = rank_suspects(np.array(probs), np.array(positive))
    top = {rows[i] for i in order[:len(flipped)]}
    precision = len(top & set(flipped.tolist())) / len(flipped)
    assert precision >= 0.75, precision
    assert contradiction[order[0]] > 0.75


async def add_inputs(sessions: async_sessionmaker[AsyncSession], dataset_id: int, texts: list[str]) -> list[int]:
    async with sessions.begin() as s:
        items = [DataItem(dataset_id=dataset_id, kind="text", content=t, origin="input",
                          content_hash=hashlib.sha256(t.encode()).hexdigest()) for t in texts]
        s.add_all(items)
        await s.flush()
        return [i.id for i in items]


async def suggestion_rows(sessions: async_sessionmaker[AsyncSession], dataset_id: int) -> list[Suggestion]:
    async with sessions() as s:
        return list(await s.scalars(select(Suggestion).where(Suggestion.dataset_id == dataset_id)
                                    .order_by(Suggestion.rank)))


async def test_a_fit_embeds_the_pool_and_replaces_the_suggestions(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], text_model: TextModel
) -> None:
    trainer = Trainer(sessions, BusEmbedder(bus), ObjectStoreHeads(bus.js), config=FitConfig(cv_folds=3),
                      suggest=SuggestConfig(limit=6))
    dataset_id, tags = await seed(sessions, per_group=6)
    pool = await add_inputs(sessions, dataset_id, [f"{g} kept input {i}" for g in ("sport", "food") for i in range(8)])
    first = await trainer.refit(dataset_id)
    assert first.state == "trained"
    async with sessions() as s:
        embedded = set(await s.scalars(select(Embedding.item_id).where(Embedding.item_id.in_(pool))))
    assert embedded == set(pool)  # kept inputs are embedded by the fit that follows them
    rows = await suggestion_rows(sessions, dataset_id)
    assert rows and all(r.version == first.version for r in rows)
    assert len(rows) <= 6 and [r.rank for r in rows] == list(range(len(rows)))
    assert all(r.tag_id in (tags["sport"], tags["food"]) for r in rows)  # music is inactive
    uncertain = [r for r in rows if r.reason == "uncertain"]
    assert uncertain and all(r.item_id in pool for r in uncertain)  # reported items are not uncertain picks
    async with sessions() as s:
        stored = dict((await s.execute(select(Embedding.item_id, Embedding.vector)
                                       .where(Embedding.item_id.in_([r.item_id for r in rows])))).all())
    x = unit(np.stack([np.frombuffer(stored[r.item_id], dtype=np.float32) for r in rows]))
    cos = x @ x.T
    assert cos[~np.eye(len(rows), dtype=bool)].max(initial=-1.0) <= SuggestConfig().max_cosine

    # A report on a suggested pair and a refit: the dataset's rows are all the new version's.
    picked = uncertain[0]
    async with sessions.begin() as s:
        s.add(Report(dataset_id=dataset_id, item_id=picked.item_id, tag_id=picked.tag_id, positive=True))
    second = await trainer.refit(dataset_id)
    assert second.state == "trained" and second.version == (first.version or 0) + 1
    rows = await suggestion_rows(sessions, dataset_id)
    assert rows and all(r.version == second.version for r in rows)
    assert (picked.item_id, picked.tag_id) not in {(r.item_id, r.tag_id) for r in rows if r.reason == "uncertain"}


class LosingEmbedder(BusEmbedder):
    """The bus embedder, except that items whose text says "unreachable" cannot be embedded (a dead URL)."""

    async def embed(self, kind: str, items: Sequence[ItemToEmbed]) -> tuple[str, list[np.ndarray | None]]:
        model_id, vectors = await super().embed(kind, items)
        lost = ["unreachable" in (item.content or "") for item in items]
        return model_id, [None if gone else v for gone, v in zip(lost, vectors, strict=True)]


async def test_a_kept_input_that_cannot_be_embedded_leaves_the_pool(
    bus: Bus, sessions: async_sessionmaker[AsyncSession], text_model: TextModel
) -> None:
    trainer = Trainer(sessions, LosingEmbedder(bus), ObjectStoreHeads(bus.js), config=FitConfig(cv_folds=3))
    dataset_id, _ = await seed(sessions, per_group=4)
    kept = await add_inputs(sessions, dataset_id, ["sport kept input", "food unreachable input"])
    assert (await trainer.refit(dataset_id)).state == "trained"
    async with sessions() as s:
        left = set(await s.scalars(select(DataItem.id).where(DataItem.id.in_(kept))))
    assert left == {kept[0]}
