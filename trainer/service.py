"""One dataset's refit: read its reports, embed what lacks an embedding, fit, commit (no transport here).

Every vector of a fit comes from the model its kind's service runs when the refit starts (ModelChanged else).
A refit whose inputs equal those of the live head (its fingerprint) keeps that head instead."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelkit.heads import Head
from shared.errors import Unavailable
from shared.schemas.inference import ModelInfoReply
from trainer import repository, suggestions
from trainer.evaluation import NULL_FIGURES
from trainer.fitting import FitConfig, FitResult, NothingToFit, Report, fit_head
from trainer.repository import ItemToEmbed, LiveHead, ReportRow, TagRow

log = structlog.get_logger(__name__)


class Embedder(Protocol):
    """The model services of each kind (``trainer.embedder.BusEmbedder`` over NATS)."""

    async def model(self, kind: str) -> ModelInfoReply: ...

    async def embed(self, kind: str, items: Sequence[ItemToEmbed]) -> tuple[str, list[np.ndarray | None]]:
        """The model id of the reply and one vector per item, None for an item that could not be embedded."""
        ...


class HeadStore(Protocol):
    """Where heads go (``trainer.heads.ObjectStoreHeads``): ``put`` returns the object name."""

    async def put(self, dataset_id: int, head: Head) -> str: ...

    async def prune(self, dataset_id: int, live_version: int) -> None: ...

    async def exists(self, object_name: str) -> bool: ...


class Unsupported(ValueError):
    """The dataset cannot be trained as it stands (no reports, no positives, unknown kind)."""


class ModelChanged(Unavailable):
    """The served model is not the one this refit started with; a retry starts over with the new one."""

    code = "model_changed"


def fingerprint(model_id: str, reports: Sequence[ReportRow], tags: Sequence[TagRow], config: FitConfig) -> str:
    """A digest of everything a fit reads: the model, each report, each tag and whether it is active,
    and the fit's settings. Items never change (one content each), so their ids stand for them."""
    inputs = [model_id, repr(config), sorted((r.item_id, r.tag_id, r.positive) for r in reports),
              sorted((t.id, t.active) for t in tags)]
    return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()


@dataclass(frozen=True)
class RefitOutcome:
    dataset_id: int
    state: str  # trained | unchanged (the live head kept) | failed | missing
    version: int | None = None
    reason: str | None = None
    embedded: int = 0
    result: FitResult | None = None


class Trainer:
    """Refits one dataset at a time; safe to repeat (a redelivered event just refits)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], embedder: Embedder, heads: HeadStore,
                 *, config: FitConfig | None = None, text_chunk: int = 32, image_chunk: int = 8,
                 suggest: suggestions.SuggestConfig | None = None) -> None:
        self.suggest = suggest or suggestions.SuggestConfig()
        self.sessions = sessions
        self.embedder = embedder
        self.heads = heads
        self.config = config or FitConfig()
        self.chunks = {"text": text_chunk, "image": image_chunk}

    @contextlib.asynccontextmanager
    async def claim(self, dataset_id: int) -> AsyncIterator[bool]:
        """True when no other trainer refits the dataset now; it then stays this one's until the block ends."""
        async with self.sessions() as session:
            yield await repository.try_lock(session, dataset_id)

    async def refit(self, dataset_id: int, *, force: bool = False) -> RefitOutcome:
        """Fit a new head, unless (``force`` aside) nothing it reads changed since the live head was fitted."""
        async with self.sessions() as session:
            dataset = await repository.get_dataset(session, dataset_id)
            if dataset is None:
                return RefitOutcome(dataset_id, "missing", reason="dataset does not exist")
            live = await repository.live_head(session, dataset)
            reports = await repository.dataset_reports(session, dataset_id)
            tags = await repository.dataset_tags(session, dataset_id)
            kind = dataset.kind
        try:
            if not reports:
                raise Unsupported("the dataset has no reports yet")
            kind = kind or reports[0].kind
            if kind not in self.chunks:
                raise Unsupported(f"datasets of kind {kind!r} cannot be trained")
            # Asked on every refit, so a head is never fitted for a model the services stopped running.
            model = await self.embedder.model(kind)
            inputs = fingerprint(model.model_id, reports, tags, self.config)
            if live is not None and not force and await self._keep(dataset_id, live, inputs):
                log.info("refit_unchanged", dataset_id=dataset_id, version=live.version)
                return RefitOutcome(dataset_id, "unchanged", version=live.version)
            await self.mark(dataset_id, "training", None)
            embedded = await self._embed_missing(dataset_id, kind, model)
            async with self.sessions() as session:
                vectors = await repository.load_embeddings(session, {r.item_id for r in reports}, model.model_id)
            result = await asyncio.to_thread(self._fit, reports, tags, vectors)
        except (Unsupported, NothingToFit) as exc:
            await self.mark(dataset_id, "failed", str(exc))
            return RefitOutcome(dataset_id, "failed", reason=str(exc))
        # What this head was fitted from: items that could not be embedded are left out, so a later request
        # finds a difference and tries them again.
        used = [r for r in reports if r.item_id in vectors]
        version = await self._commit(dataset_id, model.model_id, tags, result,
                                     fingerprint(model.model_id, used, tags, self.config))
        # Only once the new head is the one the database points at: a failed commit keeps every version.
        await self.heads.prune(dataset_id, version)
        await suggestions.refresh(self, dataset_id, version, model, result, sorted(vectors), self.suggest)
        log.info("dataset_trained", dataset_id=dataset_id, version=version, model_id=model.model_id,
                 reports=result.report_count, tags=len(result.tags), embedded=embedded)
        return RefitOutcome(dataset_id, "trained", version=version, embedded=embedded, result=result)

    async def mark(self, dataset_id: int, state: str, reason: str | None) -> None:
        async with self.sessions.begin() as session:
            await repository.set_state(session, dataset_id, state, reason)

    async def _keep(self, dataset_id: int, live: LiveHead, inputs: str) -> bool:
        """Keep the live head if it was fitted from ``inputs`` and its blob is still in the store."""
        if live.fingerprint != inputs:
            return False
        if not await self.heads.exists(live.object_name):
            log.warning("head_missing_refit", dataset_id=dataset_id, version=live.version)
            return False
        async with self.sessions.begin() as session:
            return await repository.keep_head(session, dataset_id, live.version)

    async def _embed_missing(self, dataset_id: int, kind: str, model: ModelInfoReply) -> int:
        async with self.sessions() as session:
            missing = await repository.items_missing_embedding(session, dataset_id, model.model_id)
        missing = [item for item in missing if item.kind == kind]
        chunk = self.chunks[kind]
        stored = 0
        for start in range(0, len(missing), chunk):
            part = missing[start:start + chunk]
            got_model, vectors = await self.embedder.embed(kind, part)
            done = [(item.id, v) for item, v in zip(part, vectors, strict=True) if v is not None]
            if got_model != model.model_id or any(v.shape != (model.dim,) for _, v in done):
                # A replica on another model answered: storing its vectors under this id would mix models.
                raise ModelChanged(f"the {kind} model changed during training ({model.model_id} -> {got_model})")
            if not done:
                continue
            # Each chunk commits on its own, so a crash mid-refit keeps the work already paid for.
            async with self.sessions.begin() as session:
                await repository.store_embeddings(session, model.model_id, [i for i, _ in done],
                                                  np.stack([v for _, v in done]))
            stored += len(done)
        return stored

    def _fit(self, reports: Sequence[ReportRow], tags: Sequence[TagRow],
             vectors: Mapping[int, np.ndarray]) -> FitResult:
        rows = {item_id: row for row, item_id in enumerate(sorted(vectors))}
        usable = [Report(rows[r.item_id], r.tag_id, r.positive) for r in reports if r.item_id in rows]
        if not rows or not usable:
            raise Unsupported("no reported item could be embedded")
        matrix = np.stack([vectors[item_id] for item_id in sorted(vectors)])
        return fit_head(matrix, usable, [t.id for t in tags], self.config)

    async def _commit(self, dataset_id: int, model_id: str, tags: Sequence[TagRow], result: FitResult,
                      inputs: str) -> int:
        active = {t.id for t in tags if t.active}
        fitted = {t.tag_id: t for t in result.tags}
        tag_updates: dict[int, tuple[float | None, Mapping[str, Any]]] = {
            t.id: ((float(fitted[t.id].threshold), fitted[t.id].evaluation) if t.id in fitted
                   else (None, dict(NULL_FIGURES)))
            for t in tags
        }
        async with self.sessions.begin() as session:
            # The row lock serialises replicas refitting one dataset, so versions never collide.
            dataset = await repository.get_dataset(session, dataset_id, lock=True)
            if dataset is None:
                raise Unsupported("dataset deleted during training")
            version = (dataset.head_version or 0) + 1
            name = await self.heads.put(dataset_id, result.head(model_id, version))
            await repository.save_fit(
                session, dataset_id=dataset_id, version=version, model_id=model_id, object_name=name,
                report_count=result.report_count, evaluation=result.dataset_evaluation(active), tags=tag_updates,
                fingerprint=inputs,
            )
        return version
