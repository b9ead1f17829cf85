"""Tagging: the dataset's active tags and head version (cached), the model service's answer, counted predictions."""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import structlog

from gateway.infra.datasetcache import DatasetView
from gateway.infra.predictions import PredictionCounter
from gateway.schemas import ImageTagsOut, MediaItem, TagOptions, TagOut, TagTextsBody, TextTagsOut
from gateway.service.checks import check_count, check_media_count, check_text
from gateway.service.datasets import fix_kind, load_dataset, wrong_kind
from gateway.state import AppState
from gateway.uow import UnitOfWork
from shared.errors import Internal
from shared.schemas.inference import (
    UNKNOWN_TAG_ID,
    UNKNOWN_TITLE,
    HeadRef,
    ItemResult,
    ScoredTag,
    TagRef,
    TagReply,
    TagTextsRequest,
)
from shared.schemas.media import TagImagesRequest
from shared.subjects import TEXT_TAG, VISION_TAG
from shared.textnorm import dedup_key, normalize_text

log = structlog.get_logger(__name__)

# Keep each message well under NATS' default 1 MiB max payload.
_MAX_TEXT_BYTES_PER_REQUEST = 512 * 1024


def probability(value: float) -> int | float:
    """Rounded to 2 decimals, integral values as integers: the reference prints 1, not 1.0."""
    rounded = round(float(value), 2)
    return int(rounded) if rounded.is_integer() else rounded


def tags_out(tags: Sequence[ScoredTag]) -> list[TagOut]:
    return [TagOut(id=t.id, probability=probability(t.probability), title=t.title) for t in tags]


def _unknown() -> list[ScoredTag]:
    return [ScoredTag(id=UNKNOWN_TAG_ID, title=UNKNOWN_TITLE, probability=1.0)]


async def prepare(state: AppState, account_id: int, name: str, kind: str) -> tuple[HeadRef, list[TagRef]]:
    """The dataset's head and active tags, from the replica's cache when it holds them. A miss reads them in
    a short unit of work of its own, committed before any model service is asked, so no pooled connection
    idles while a model works."""
    load = functools.partial(_load_view, state, account_id, name, kind)
    view = await state.datasets.get_or_load(account_id, name, load)
    if view.kind != kind:
        raise wrong_kind(name, view.kind, kind)
    return view.head, list(view.tags)


async def _load_view(state: AppState, account_id: int, name: str, kind: str) -> DatasetView:
    """Read the view; a dataset used for the first time takes ``kind`` (the caller checks it after)."""

    async def read(uow: UnitOfWork) -> DatasetView:
        dataset = await load_dataset(uow.repo, account_id, name)
        fixed = await fix_kind(uow, dataset, kind)
        tags = tuple(TagRef(id=t.id, title=t.title, threshold=t.threshold_override)
                     for t in await uow.repo.active_tags(dataset.id))
        return DatasetView(dataset.id, fixed, HeadRef(dataset_id=dataset.id, version=dataset.head_version), tags,
                           keep_inputs=dataset.keep_inputs)

    return await state.transact(read)


def count_predictions(counter: PredictionCounter, tag_lists: Iterable[Sequence[ScoredTag]]) -> None:
    counter.add(t.id for tags in tag_lists for t in tags if t.id != UNKNOWN_TAG_ID)


def _chunks(texts: Sequence[str]) -> list[list[str]]:
    chunks: list[list[str]] = [[]]
    size = 0
    for text in texts:
        n = 2 * len(text.encode("utf-8")) + 8  # worst case with JSON escapes
        if chunks[-1] and size + n > _MAX_TEXT_BYTES_PER_REQUEST:
            chunks.append([])
            size = 0
        chunks[-1].append(text)
        size += n
    return chunks


def _check_items(items: Sequence[ItemResult], expected: int, service: str) -> None:
    if len(items) != expected:
        raise Internal(f"{service} answered {len(items)} items for {expected}")


async def tag_texts(state: AppState, account_id: int, body: TagTextsBody) -> list[TextTagsOut]:
    bus, settings = state.bus, state.settings
    check_count(body.contents, "contents", settings)
    for i, text in enumerate(body.contents):
        check_text(text, f"contents[{i}]", settings)
    head, tags = await prepare(state, account_id, body.dataset, "text")
    if not tags:  # nothing can pass a threshold: no need to ask the model
        items = [ItemResult(tags=_unknown()) for _ in body.contents]
    else:
        replies = await asyncio.gather(
            *(
                bus.request(
                    TEXT_TAG,
                    TagTextsRequest(head=head, tags=tags, texts=chunk, top_k=body.top_k,
                                    min_probability=body.min_probability),
                    TagReply,
                    timeout_s=settings.text_timeout_s,
                    idempotent=True,  # a replica that dies holding it is noticed; another one answers
                )
                for chunk in _chunks(body.contents)
            )
        )
        items = [item for reply in replies for item in reply.items]
        _check_items(items, len(body.contents), TEXT_TAG.queue)
    count_predictions(state.predictions, (item.tags for item in items))
    await keep_inputs(state, account_id, body.dataset, "text", [
        {"kind": "text", "content": text.strip(), "content_hash": dedup_key(text)}
        for text, item in zip(body.contents, items, strict=True) if not item.error and normalize_text(text)])
    return [
        TextTagsOut(content=content, tags=tags_out(item.tags), error=item.error or None)
        for content, item in zip(body.contents, items, strict=True)
    ]


async def tag_images(
    state: AppState, account_id: int, dataset: str, images: Sequence[MediaItem], options: TagOptions | None = None
) -> list[ImageTagsOut]:
    bus, settings = state.bus, state.settings
    check_media_count(images, "image", settings)
    head, tags = await prepare(state, account_id, dataset, "image")
    request = TagImagesRequest(head=head, tags=tags, images=[image.ref for image in images],
                               top_k=options.top_k if options else None,
                               min_probability=options.min_probability if options else None)
    reply = await bus.request(VISION_TAG, request, TagReply, timeout_s=settings.vision_timeout_s, idempotent=True)
    _check_items(reply.items, len(images), VISION_TAG.queue)
    count_predictions(state.predictions, (item.tags for item in reply.items))
    await keep_inputs(state, account_id, dataset, "image", [
        {"kind": "image", "source_url": image.ref.url, "content_hash": url_key(image.ref.url)}
        for image, item in zip(images, reply.items, strict=True) if not item.error and image.ref.url])
    return [
        ImageTagsOut(
            image_url=None if image.uploaded else image.name,
            image_file=image.name if image.uploaded else None,
            error=item.error or None,
            tags=[] if item.error else tags_out(item.tags),
        )
        for image, item in zip(images, reply.items, strict=True)
    ]


def url_key(url: str) -> str:
    """The dedup key of an image input kept by URL (reports key images by their bytes' hash instead)."""
    return hashlib.sha256(b"url\0" + url.encode()).hexdigest()


# keep_inputs writes in flight (strong references: the event loop keeps only weak ones to tasks).
_KEEPING: set[asyncio.Task[None]] = set()
_MAX_KEEPING = 256  # beyond, inputs are dropped (logged) rather than queued without bound


async def keep_inputs(state: AppState, account_id: int, name: str, kind: str, rows: list[dict[str, Any]]) -> None:
    """With the dataset's keep_inputs on, store what a tag call answered for as pool items (suggest_labels):
    in a short unit of work of its own, started once the answer is ready and not awaited by the call (its
    round trips would double a cached tag call's latency). Best effort: a failure is logged."""
    view = state.datasets.get(account_id, name)
    if view is None:  # the dataset cache is off (or the entry just went): read the view again
        view = await _load_view(state, account_id, name, kind)
    if not view.keep_inputs or not rows:
        return
    unique = [row for _, row in sorted({row["content_hash"]: row for row in rows}.items())]  # one lock order
    if len(_KEEPING) >= _MAX_KEEPING:
        log.warning("keep_inputs_dropped", dataset_id=view.dataset_id, items=len(unique), in_flight=len(_KEEPING))
        return
    task = asyncio.create_task(_store_inputs(state, view.dataset_id, unique))
    _KEEPING.add(task)
    task.add_done_callback(_KEEPING.discard)


async def _store_inputs(state: AppState, dataset_id: int, rows: list[dict[str, Any]]) -> None:
    try:
        await state.transact(lambda uow: uow.repo.keep_inputs(dataset_id, rows, state.settings.max_input_items))
    except Exception as exc:
        log.warning("keep_inputs_failed", dataset_id=dataset_id, items=len(rows), error=repr(exc))


async def kept_inputs_settled() -> None:
    """Until every keep_inputs write started so far has finished (tests, shutdown)."""
    while _KEEPING:
        await asyncio.gather(*list(_KEEPING), return_exceptions=True)
