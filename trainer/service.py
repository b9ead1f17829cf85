"""One dataset's refit: read its reports, embed what lacks an embedding, fit, commit (no transport here).

Every vector of a fit comes from the model its kind's service runs when the refit starts (ModelChanged else).
A refit whose inputs equal those of the live head (its fingerprint) keeps that head instead.

Every fit is a numbered ``HeadVersion`` with its figures. The promotion gate (``promotion_gate``) holds a fit
whose cross-validated macro-F1 is worse than the live version's by more than ``promotion_tolerance`` points:
it is stored, ``held``, and the live head keeps answering until a forced refit or ``use_version``.
Retention then deletes the versions (rows and blobs) beyond the live one, newer held ones and the
``versions_kept`` newest others.

The webhooks' training events are written in the transaction that commits the fit (or records the failure):
the outcome carries the rows for the caller to publish once committed (``trainer.webhook_events``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelkit.heads import Head
from shared.errors import KashfError
from shared.schemas.inference import ModelInfoReply
from trainer import repository, selftraining, suggestions, webhook_events
from trainer.embedder import ModelChanged
from trainer.evaluation import NULL_FIGURES
from trainer.fitting import FitConfig, FitResult, NothingToFit, Report, fit_head
from trainer.repository import ItemToEmbed, LiveHead, ReportRow, TagRow, VersionFigures
from trainer.webhook_repository import Queued
from trainer.zeroshot import MIN_TAGS, zero_shot_fit

log = structlog.get_logger(__name__)


class Embedder(Protocol):
    """The model services of each kind (``trainer.embedder.BusEmbedder`` over NATS)."""

    async def model(self, kind: str) -> ModelInfoReply: ...

    async def embed(self, kind: str, items: Sequence[ItemToEmbed]) -> tuple[str, list[np.ndarray | None]]:
        """The model id of the reply and one vector per item, None for an item that could not be embedded."""
        ...


class HeadStore(Protocol):
    """Where heads go (``trainer.heads.ObjectStoreHeads``): ``put`` returns the object name;
    ``versions_kept`` old versions are kept besides the live one and newer held ones."""

    versions_kept: int

    async def put(self, dataset_id: int, head: Head) -> str: ...

    async def delete(self, names: Sequence[str]) -> None: ...

    async def exists(self, object_name: str) -> bool: ...


PREFIT_IMAGES = 64  # kept input images embedded before a self-training fit, at most (see _fit_reported)


class Unsupported(ValueError):
    """The dataset cannot be trained as it stands (no reports, no positives, unknown kind)."""


def fingerprint(model_id: str, reports: Sequence[ReportRow], tags: Sequence[TagRow], config: FitConfig,
                pool: tuple[int, int] | None = None) -> str:
    """A digest of everything a fit reads: the model, each report, each tag and whether it is active,
    the fit's settings and, when it self-trains, its unlabelled pool (``repository.pool_state``). Items never
    change (one content each), so their ids stand for them."""
    inputs: list[Any] = [model_id, repr(config), sorted((r.item_id, r.tag_id, r.positive) for r in reports),
                         sorted((t.id, t.active, t.title if config.title_examples else "") for t in tags)]
    if pool is not None:
        inputs.append(list(pool))
    return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()


def zero_shot_fingerprint(model_id: str, reports: Sequence[ReportRow], tags: Sequence[TagRow],
                          config: FitConfig) -> str:
    """``fingerprint`` of a zero-shot head: the titles always count (the active flags do not: an inactive tag
    still competes), and only the zero-shot settings."""
    inputs = ["zero_shot", model_id, [config.zero_shot_scale, config.zero_shot_floor],
              sorted((r.item_id, r.tag_id, r.positive) for r in reports), sorted((t.id, t.title) for t in tags)]
    return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()


TagFigures = Mapping[str, Any]  # str(tag id) -> {"threshold", "evaluation": {"recall", "precision", "f1"}}


def promotion_gate(new: TagFigures, live: VersionFigures | None, *, model_id: str, active: set[int],
                   tolerance: float) -> str | None:
    """Why a new fit must be held (not made live), or None to promote it.

    Held when its cross-validated macro-F1 is more than ``tolerance`` points below the live version's. Both are
    taken over the same tags: those active now that both versions could evaluate, so adding (or
    deactivating) a tag never holds a fit. Each figure is the version's own out-of-fold F1 on the reports it
    was fitted from, by the same protocol (folds, thresholds chosen on the other folds). Scoring the live
    head on the new reports instead would not work: it learned most of them (no out-of-fold figure
    exists for it there), and a label flipped by mistake counts against both heads alike, so the gate
    could never catch the fit those flipped labels made worse. The question the gate answers is "do the
    reports as they now stand still teach as good a head as the live one's did?"
    No gate without a live version, with one of another model (it cannot serve the new model's
    vectors) or with one fitted before versions carried figures."""
    if live is None or live.model_id != model_id or not live.tags:
        return None
    pairs = []
    for tag_id in sorted(active):
        before = (live.tags.get(str(tag_id)) or {}).get("evaluation") or {}
        after = (new.get(str(tag_id)) or {}).get("evaluation") or {}
        if before.get("f1") is not None and after.get("f1") is not None:
            pairs.append((float(before["f1"]), float(after["f1"])))
    if not pairs:
        return None
    live_f1 = sum(b for b, _ in pairs) / len(pairs)
    new_f1 = sum(a for _, a in pairs) / len(pairs)
    if new_f1 >= live_f1 - tolerance:
        return None
    return (f"the new fit is held: its cross-validated macro-F1 {new_f1:.1f} is {live_f1 - new_f1:.1f} points "
            f"below live version {live.version}'s {live_f1:.1f} over the {len(pairs)} tags both evaluate "
            f"(KASHF_PROMOTION_TOLERANCE {tolerance:g}); train with \"force\": true or use_version to promote it")


def macro_f1(tags: TagFigures, active: set[int]) -> float | None:
    """Mean F1 (percent) over the active tags with figures; None when none has any."""
    f1 = [float(fig["evaluation"]["f1"]) for tag_id, fig in tags.items()
          if int(tag_id) in active and fig["evaluation"].get("f1") is not None]
    return round(sum(f1) / len(f1), 2) if f1 else None


@dataclass(frozen=True)
class RefitOutcome:
    """What one refit did; the webhooks' training events are built from it (keep the fields stable).

    ``state``: trained (a new version, now live) | held (a new version that lost the promotion gate; the
    live head kept answering; ``reason`` says why) | unchanged (nothing new fitted; ``version`` is the live
    one) | failed (``reason``) | missing (the dataset is gone). ``evaluation`` is the new version's
    {"recall", "precision", "f1"} (percent, as dataset_info shows) and ``macro_f1`` its gate figure, for
    trained and held. ``webhooks``: the delivery rows of its training event, committed with it, to publish."""

    dataset_id: int
    state: str
    version: int | None = None
    reason: str | None = None
    embedded: int = 0
    result: FitResult | None = None
    evaluation: Mapping[str, Any] | None = None
    macro_f1: float | None = None
    webhooks: tuple[Queued, ...] = ()


class Trainer:
    """Refits one dataset at a time; safe to repeat (a redelivered event just refits)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], embedder: Embedder, heads: HeadStore,
                 *, config: FitConfig | None = None, text_chunk: int = 32, image_chunk: int = 8,
                 suggest: suggestions.SuggestConfig | None = None, promotion_tolerance: float = 2.0) -> None:
        self.promotion_tolerance = promotion_tolerance
        self.suggest = suggest or suggestions.SuggestConfig()
        self.sessions = sessions
        self.embedder = embedder
        self.heads = heads
        self.config = config or FitConfig()
        self.chunks = {"text": text_chunk, "image": image_chunk}

    async def account_of(self, dataset_id: int) -> int | None:
        """The dataset's account (None when the dataset is gone: its refit then says so)."""
        async with self.sessions() as session:
            return await repository.dataset_account(session, dataset_id)

    @contextlib.asynccontextmanager
    async def claim(self, dataset_id: int) -> AsyncIterator[bool]:
        """True when no other trainer refits the dataset now; it then stays this one's until the block ends."""
        async with self.sessions() as session:
            yield await repository.try_lock(session, dataset_id)

    async def refit(self, dataset_id: int, *, force: bool = False) -> RefitOutcome:
        """Fit a new head, unless (``force`` aside) nothing it reads changed since the live head (or the
        held fit above it) was fitted. ``force`` also makes the new fit live whatever the promotion gate says."""
        async with self.sessions() as session:
            dataset = await repository.get_dataset(session, dataset_id)
            if dataset is None:
                return RefitOutcome(dataset_id, "missing", reason="dataset does not exist")
            live = await repository.live_head(session, dataset)
            held = await repository.newest_held(session, dataset)
            reports = await repository.dataset_reports(session, dataset_id)
            tags = await repository.dataset_tags(session, dataset_id)
            kind = dataset.kind
            # Self-training's pool counts among the fit's inputs: new kept inputs make "train" fit again.
            pooled = selftraining.may_apply([(r.item_id, r.positive) for r in reports], self.config)
            pool = await repository.pool_state(session, dataset_id) if pooled else None
        try:
            kind = kind or (reports[0].kind if reports else None)
            # A text dataset with no positive report yet is tagged from its tag titles (trainer.zeroshot).
            zero_shot = kind == "text" and not any(r.positive for r in reports)
            if not reports and not zero_shot:
                raise Unsupported("the dataset has no reports yet")
            if zero_shot and len(tags) < MIN_TAGS:
                raise Unsupported(f"the dataset has no {'positive ' if reports else ''}reports yet, and tagging "
                                  f"from tag titles alone needs at least {MIN_TAGS} tags")
            if kind not in self.chunks:
                raise Unsupported(f"datasets of kind {kind!r} cannot be trained")
            # Asked on every refit, so a head is never fitted for a model the services stopped running.
            model = await self.embedder.model(kind)
            inputs = (zero_shot_fingerprint(model.model_id, reports, tags, self.config) if zero_shot
                      else fingerprint(model.model_id, reports, tags, self.config, pool))
            if live is not None and not force and await self._keep(dataset_id, live, inputs):
                log.info("refit_unchanged", dataset_id=dataset_id, version=live.version)
                return RefitOutcome(dataset_id, "unchanged", version=live.version)
            if (live is not None and held is not None and not force
                    and await self._keep_held(dataset_id, live, held, inputs, model.model_id, tags)):
                # The same reports would fit the same held head again: the live one keeps answering.
                log.info("refit_unchanged_held", dataset_id=dataset_id, version=live.version, held=held.version)
                return RefitOutcome(dataset_id, "unchanged", version=live.version)
            await self.mark(dataset_id, "training", None)
            embedded, item_ids = 0, np.zeros(0, dtype=np.int64)
            if zero_shot:
                result = await self._zero_shot(tags, model.model_id)
            else:
                embedded = await self._embed_missing(dataset_id, kind, model)
                item_ids, result = await self._fit_reported(dataset_id, kind, reports, tags, model,
                                                            bool(pool and pool[0]))
                # What this head was fitted from: items that could not be embedded are left out, so a later
                # request finds a difference and tries them again.
                present = set(item_ids.tolist())
                inputs = fingerprint(model.model_id, [r for r in reports if r.item_id in present], tags, self.config,
                                     pool)
        except (Unsupported, NothingToFit) as exc:
            queued = await self.mark(dataset_id, "failed", str(exc))
            return RefitOutcome(dataset_id, "failed", reason=str(exc), webhooks=tuple(queued))
        version, held_reason, queued = await self._commit(dataset_id, model.model_id, tags, result, inputs,
                                                          force=force)
        # Only once the new version is committed: a failed commit keeps every version.
        await self._retain(dataset_id)
        if held_reason is None:  # suggestions come from the live head: a held fit leaves them as they are
            await suggestions.refresh(self, dataset_id, version, model, result, item_ids.tolist(), self.suggest)
        active = {t.id for t in tags if t.active}
        outcome = RefitOutcome(
            dataset_id, "held" if held_reason else "trained", version=version, reason=held_reason,
            embedded=embedded, result=result, evaluation=result.dataset_evaluation(active),
            macro_f1=macro_f1(_tag_figures(tags, result), active), webhooks=tuple(queued),
        )
        log.info("dataset_held" if held_reason else "dataset_trained", dataset_id=dataset_id, version=version,
                 model_id=model.model_id, reports=result.report_count, tags=len(result.tags), embedded=embedded,
                 macro_f1=outcome.macro_f1, mode=result.mode, pseudo_labels=result.pseudo_labels)
        return outcome

    async def mark(self, dataset_id: int, state: str, reason: str | None) -> list[Queued]:
        """Set the dataset's state; "failed" also queues the training.failed event in the same transaction
        (its rows are returned, to publish)."""
        async with self.sessions.begin() as session:
            await repository.set_state(session, dataset_id, state, reason)
            if state != "failed":
                return []
            return await webhook_events.queue_training_event(session, dataset_id, webhook_events.FAILED,
                                                             state="failed", version=None, evaluation=None)

    async def _keep(self, dataset_id: int, live: LiveHead, inputs: str) -> bool:
        """Keep the live head if it was fitted from ``inputs`` and its blob is still in the store."""
        if live.fingerprint != inputs:
            return False
        if not await self.heads.exists(live.object_name):
            log.warning("head_missing_refit", dataset_id=dataset_id, version=live.version)
            return False
        async with self.sessions.begin() as session:
            return await repository.keep_head(session, dataset_id, live.version)

    async def _keep_held(self, dataset_id: int, live: LiveHead, held: LiveHead, inputs: str, model_id: str,
                         tags: Sequence[TagRow]) -> bool:
        """Keep the live head if the held version above it was fitted from ``inputs`` (and is still stored):
        refitting would store the same held head again. The dataset says again why it is held."""
        if held.fingerprint != inputs or not await self.heads.exists(held.object_name):
            return False
        async with self.sessions.begin() as session:
            live_figures = await repository.version_figures(session, dataset_id, live.version)
            held_figures = await repository.version_figures(session, dataset_id, held.version)
            reason = promotion_gate(held_figures.tags or {} if held_figures else {}, live_figures,
                                    model_id=model_id, active={t.id for t in tags if t.active},
                                    tolerance=self.promotion_tolerance)
            if reason is None:  # the tolerance changed since: fit again, the gate decides anew
                return False
            return await repository.keep_head(session, dataset_id, live.version, f"version {held.version}: {reason}")

    async def _retain(self, dataset_id: int) -> None:
        """Delete the versions retention gives up, blobs first: if the rows' deletion then fails, the next
        pass finds them again (a blob already gone counts as deleted), so no blob is ever left orphaned.
        The dataset row stays locked meanwhile, so use_version cannot make a doomed version live.
        Best effort: the fit is committed already, a failure here is logged and the next fit retries."""
        try:
            async with self.sessions.begin() as session:
                dataset = await repository.get_dataset(session, dataset_id, lock=True)
                if dataset is None:
                    return
                doomed = await repository.doomed_versions(session, dataset_id, dataset.head_version,
                                                          self.heads.versions_kept)
                if not doomed:
                    return
                await self.heads.delete([name for _, name in doomed])
                await repository.delete_versions(session, dataset_id, [v for v, _ in doomed])
            log.info("head_versions_pruned", dataset_id=dataset_id, versions=[v for v, _ in doomed])
        except (KashfError, SQLAlchemyError, OSError) as exc:
            log.warning("head_prune_failed", dataset_id=dataset_id, error=type(exc).__name__)

    async def _embed_missing(self, dataset_id: int, kind: str, model: ModelInfoReply) -> int:
        async with self.sessions() as session:
            missing = await repository.items_missing_embedding(session, dataset_id, model.model_id)
        stored, _ = await self.embed_and_store(kind, [item for item in missing if item.kind == kind], model)
        return stored

    async def embed_and_store(self, kind: str, items: Sequence[ItemToEmbed],
                              model: ModelInfoReply) -> tuple[int, list[int]]:
        """Embed ``items`` with ``model`` chunk by chunk and store their vectors: (how many were stored, ids of
        the items the model could not embed). ModelChanged when a replica on another model answers."""
        chunk = self.chunks[kind]
        stored, failed = 0, []
        for start in range(0, len(items), chunk):
            part = items[start:start + chunk]
            got_model, vectors = await self.embedder.embed(kind, part)
            done = [(item.id, v) for item, v in zip(part, vectors, strict=True) if v is not None]
            if got_model != model.model_id or any(v.shape != (model.dim,) for _, v in done):
                # A replica on another model answered: storing its vectors under this id would mix models.
                raise ModelChanged(f"the {kind} model changed during training ({model.model_id} -> {got_model})")
            failed += [item.id for item, v in zip(part, vectors, strict=True) if v is None]
            if not done:
                continue
            # Each chunk commits on its own, so a crash mid-refit keeps the work already paid for.
            async with self.sessions.begin() as session:
                await repository.store_embeddings(session, model.model_id, [i for i, _ in done],
                                                  np.stack([v for _, v in done]))
            stored += len(done)
        return stored, failed

    async def _title_vectors(self, kind: str, tags: Sequence[TagRow], model_id: str) -> dict[int, np.ndarray]:
        """Text datasets: each tag title's embedding by the items' model (FitConfig.title_examples), else none."""
        if kind != "text" or not self.config.title_examples or not tags:
            return {}
        got_model, titles = await self._embed_titles(tags)
        return titles if got_model == model_id else {}  # the service moved to another model: fit without titles

    async def _embed_titles(self, tags: Sequence[TagRow]) -> tuple[str, dict[int, np.ndarray]]:
        """The text model's id and each tag title's embedding, as the service embeds a text ("query: " form)."""
        items = [ItemToEmbed(id=t.id, kind="text", content=t.title, media=None, media_type=None, source_url=None)
                 for t in tags]
        got_model, vectors = await self.embedder.embed("text", items) if items else ("", [])
        return got_model, {t.id: v for t, v in zip(tags, vectors, strict=True) if v is not None}

    async def _zero_shot(self, tags: Sequence[TagRow], model_id: str) -> FitResult:
        """The head from the tag titles alone (trainer.zeroshot); ModelChanged if another model answers."""
        got_model, titles = await self._embed_titles(tags)
        if got_model != model_id:
            raise ModelChanged(f"the text model changed during training ({model_id} -> {got_model})")
        return zero_shot_fit(titles, [t.id for t in tags], self.config)

    async def _fit_reported(self, dataset_id: int, kind: str, reports: Sequence[ReportRow], tags: Sequence[TagRow],
                            model: ModelInfoReply, pooled: bool = False) -> tuple[np.ndarray, FitResult]:
        """Read the reported items' vectors and fit them: the item of each row of the matrix, and the fit.
        ``pooled``: embed the unlabelled pool first and self-train on its newest ``FitConfig.self_pool_max``.
        The matrices live only as long as this call: the suggestions' refresh after it reads the pool's own."""
        pool = None
        if pooled:
            # Kept image inputs are fetched by URL: before the fit only a few, so the new head is not kept
            # waiting on slow hosts; the suggestions' refresh after the fit embeds more for the next one.
            limit = self.suggest.embed_per_refit if kind == "text" else min(self.suggest.embed_per_refit,
                                                                             PREFIT_IMAGES)
            await suggestions.embed_pool(self, dataset_id, model, replace(self.suggest, embed_per_refit=limit))
        async with self.sessions() as session:
            item_ids, vectors = await repository.reported_embeddings(session, dataset_id, model.model_id)
            if pooled:
                pool = await repository.unlabelled_embeddings(session, dataset_id, model.model_id,
                                                              self.config.self_pool_max)
        titles = await self._title_vectors(kind, tags, model.model_id)
        result = await asyncio.to_thread(self._fit, reports, tags, item_ids, vectors, titles, pool)
        return item_ids, result

    def _fit(self, reports: Sequence[ReportRow], tags: Sequence[TagRow], item_ids: np.ndarray,
             vectors: np.ndarray, titles: Mapping[int, np.ndarray] | None = None,
             pool: np.ndarray | None = None) -> FitResult:
        """``vectors[i]`` is item ``item_ids[i]``'s embedding (the matrix is fitted as it is, not copied)."""
        rows = {item_id: row for row, item_id in enumerate(item_ids.tolist())}
        usable = [Report(rows[r.item_id], r.tag_id, r.positive) for r in reports if r.item_id in rows]
        if not rows or not usable:
            raise Unsupported("no reported item could be embedded")
        return fit_head(vectors, usable, [t.id for t in tags], self.config, titles, pool)

    async def _commit(self, dataset_id: int, model_id: str, tags: Sequence[TagRow], result: FitResult,
                      inputs: str, *, force: bool) -> tuple[int, str | None, list[Queued]]:
        """Store the new version; live unless the promotion gate holds it (``force`` skips the gate).
        Returns its number, when held why, and the rows of its training.finished event, written in the same
        transaction: a crash after the commit cannot lose the event (the webhook sweep publishes them)."""
        active = {t.id for t in tags if t.active}
        figures = _tag_figures(tags, result)
        async with self.sessions.begin() as session:
            # The row lock serialises replicas refitting one dataset (and use_version), so versions never
            # collide and the gate compares with the version live at this commit.
            dataset = await repository.get_dataset(session, dataset_id, lock=True)
            if dataset is None:
                raise Unsupported("dataset deleted during training")
            # Held versions sit above the live one: number from the newest stored.
            version = max(dataset.head_version or 0, await repository.newest_version(session, dataset_id)) + 1
            held_reason = None
            if not force:
                live = await repository.version_figures(session, dataset_id, dataset.head_version)
                held_reason = promotion_gate(figures, live, model_id=model_id, active=active,
                                             tolerance=self.promotion_tolerance)
            name = await self.heads.put(dataset_id, result.head(model_id, version))
            await repository.save_fit(
                session, dataset_id=dataset_id, version=version, model_id=model_id, object_name=name,
                report_count=result.report_count, evaluation=result.dataset_evaluation(active),
                tags={int(tag_id): (fig["threshold"], fig["evaluation"]) for tag_id, fig in figures.items()},
                fingerprint=inputs, macro_f1=macro_f1(figures, active), held_reason=held_reason,
                confusion=result.confusion(), mode=result.mode, pseudo_labels=result.pseudo_labels,
            )
            queued = await webhook_events.queue_training_event(
                session, dataset_id, webhook_events.FINISHED, state="held" if held_reason else "live",
                version=version, evaluation=result.dataset_evaluation(active))
        return version, held_reason, queued


def _tag_figures(tags: Sequence[TagRow], result: FitResult) -> dict[str, dict[str, Any]]:
    """Per tag of the dataset: the learned threshold and figures of this fit (null ones when not fitted)."""
    fitted = {t.tag_id: t for t in result.tags}
    return {
        str(t.id): ({"threshold": float(fitted[t.id].threshold), "evaluation": fitted[t.id].evaluation}
                    if t.id in fitted else {"threshold": None, "evaluation": dict(NULL_FIGURES)})
        for t in tags
    }
