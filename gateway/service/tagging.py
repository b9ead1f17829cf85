"""Tagging: load the dataset's active tags and head version, ask the model service, count predictions."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable, Sequence
from typing import Any

from gateway import transactions
from gateway.datasetcache import DatasetView
from gateway.predictions import PredictionCounter
from gateway.repository import Repository
from gateway.schemas import TagTextsBody, VideoParams
from gateway.service.datasets import load_dataset, wrong_kind
from gateway.service.limits import check_count, check_text
from gateway.state import AppState
from shared.bus import Bus
from shared.db.models import Dataset
from shared.errors import BadRequest, Internal, Timeout
from shared.schemas.inference import HeadRef, ItemResult, ScoredTag, TagRef, TagReply, TagTextsRequest
from shared.schemas.media import MediaInput, TagImagesRequest, TagVideoReply, TagVideoRequest, VideoFrame
from shared.settings import GatewaySettings
from shared.subjects import TEXT_TAG, VIDEO_TAG, VISION_TAG

UNKNOWN_TAG_ID = 0
UNKNOWN_TITLE = "ناآشنا"
# Keep each message well under NATS' default 1 MiB max payload.
_MAX_TEXT_BYTES_PER_REQUEST = 512 * 1024


def probability(value: float) -> int | float:
    """Rounded to 2 decimals, integral values as integers: the reference prints 1, not 1.0."""
    rounded = round(float(value), 2)
    return int(rounded) if rounded.is_integer() else rounded


def tags_out(tags: Sequence[ScoredTag]) -> list[dict[str, Any]]:
    return [{"id": t.id, "probability": probability(t.probability), "title": t.title} for t in tags]


def frames_out(frames: Sequence[VideoFrame]) -> list[dict[str, Any]]:
    return [{"frame": f.frame, "time": f.time, "tags": tags_out(f.tags)} for f in frames]


def check_media_count(items: Sequence[tuple[str, str, MediaInput]], kind: str, settings: GatewaySettings) -> None:
    """Errors name the list as sent: ``image_urls`` for URLs, ``image_file`` for uploads."""
    uploaded = bool(items) and items[0][0].endswith("_file")
    check_count(items, f"{kind}_file" if uploaded else f"{kind}_urls", settings)


def _unknown() -> list[ScoredTag]:
    return [ScoredTag(id=UNKNOWN_TAG_ID, title=UNKNOWN_TITLE, probability=1.0)]


async def prepare(state: AppState, account_id: int, name: str, kind: str) -> tuple[HeadRef, list[TagRef]]:
    """The dataset's head and active tags, from the replica's cache when it holds them.

    A miss reads them in a short transaction of its own, ended before any model service is asked, so
    no pooled connection idles while a model works.
    """
    load = functools.partial(_load_view, state, account_id, name, kind)
    view = await state.datasets.get_or_load(account_id, name, load)
    if view.kind != kind:
        raise wrong_kind(name, view.kind, kind)
    return view.head, list(view.tags)


async def _load_view(state: AppState, account_id: int, name: str, kind: str) -> DatasetView:
    """Read the view; a dataset used for the first time takes ``kind`` (the caller checks it after)."""
    async with state.sessionmaker() as session:
        repo = Repository(session)
        try:
            dataset: Dataset = await load_dataset(repo, account_id, name)
            fixed = dataset.kind or await repo.fix_kind(dataset, kind)
            tags = tuple(TagRef(id=t.id, title=t.title) for t in await repo.active_tags(dataset.id))
        except BaseException:
            await transactions.rollback(session)
            raise
        await transactions.commit(state, session)
    return DatasetView(dataset.id, fixed, HeadRef(dataset_id=dataset.id, version=dataset.head_version), tags)


def _count_predictions(counter: PredictionCounter, tag_lists: Iterable[Sequence[ScoredTag]]) -> None:
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


async def tag_texts(state: AppState, account_id: int, body: TagTextsBody) -> list[dict[str, Any]]:
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
                    TagTextsRequest(head=head, tags=tags, texts=chunk),
                    TagReply,
                    timeout_s=settings.text_timeout_s,
                )
                for chunk in _chunks(body.contents)
            )
        )
        items = [item for reply in replies for item in reply.items]
        _check_items(items, len(body.contents), TEXT_TAG.queue)
    _count_predictions(state.predictions, (item.tags for item in items))
    out = []
    for content, item in zip(body.contents, items, strict=True):
        element: dict[str, Any] = {"content": content, "tags": tags_out(item.tags)}
        if item.error:
            element["error"] = item.error
        out.append(element)
    return out


async def tag_images(
    state: AppState, account_id: int, dataset: str, images: Sequence[tuple[str, str, MediaInput]]
) -> list[dict[str, Any]]:
    """``images``: (answer key, its value, where), e.g. ("image_url", url, MediaInput(url=url))."""
    bus, settings = state.bus, state.settings
    check_media_count(images, "image", settings)
    head, tags = await prepare(state, account_id, dataset, "image")
    request = TagImagesRequest(head=head, tags=tags, images=[ref for _, _, ref in images])
    reply = await bus.request(VISION_TAG, request, TagReply, timeout_s=settings.vision_timeout_s)
    _check_items(reply.items, len(images), VISION_TAG.queue)
    _count_predictions(state.predictions, (item.tags for item in reply.items))
    out = []
    for (key, value, _), item in zip(images, reply.items, strict=True):
        element: dict[str, Any] = {key: value}
        if item.error:
            element["error"] = item.error
            element["tags"] = []
        else:
            element["tags"] = tags_out(item.tags)
        out.append(element)
    return out


def check_video_params(params: VideoParams) -> None:
    if params.every_ms <= 0:
        raise BadRequest("every_ms must be a positive number of milliseconds", code="bad_every_ms")
    if params.duration is not None and params.duration < 0:
        raise BadRequest(
            "duration must be 0 (whole video) or a positive number of seconds", code="bad_duration"
        )
    if not 0 <= params.min_frame_diff <= 255:
        raise BadRequest("min_frame_diff must be between 0 and 255", code="bad_min_frame_diff")


async def tag_videos(
    state: AppState,
    account_id: int,
    params: VideoParams,
    videos: Sequence[tuple[str, str, MediaInput]],
) -> list[dict[str, Any]]:
    """One VIDEO_TAG request per video, concurrently, so the service's replicas share them."""
    check_media_count(videos, "video", state.settings)
    check_video_params(params)
    head, tags = await prepare(state, account_id, params.dataset, "image")
    try:
        replies = await _video_replies(state.bus, head, tags, params, videos, state.settings)
    except Timeout as exc:
        raise Timeout(f"{exc.detail}; for long videos send \"async\": true and poll POST /api/video_job/") from exc
    _count_predictions(state.predictions, (frame.tags for reply in replies for frame in reply.frames))
    out = []
    for (key, value, _), reply in zip(videos, replies, strict=True):
        element: dict[str, Any] = {key: value}
        if reply.error:
            element["error"] = reply.error
        element["frames"] = frames_out(reply.frames)
        out.append(element)
    return out


async def _video_replies(
    bus: Bus,
    head: HeadRef,
    tags: list[TagRef],
    params: VideoParams,
    videos: Sequence[tuple[str, str, MediaInput]],
    settings: GatewaySettings,
) -> list[TagVideoReply]:
    duration = params.duration or None
    return await asyncio.gather(
        *(
            bus.request(
                VIDEO_TAG,
                TagVideoRequest(
                    head=head,
                    tags=tags,
                    video=ref,
                    every_ms=params.every_ms,
                    duration_s=duration,
                    min_frame_diff=params.min_frame_diff,
                ),
                TagVideoReply,
                timeout_s=settings.video_timeout_s,
            )
            for _, _, ref in videos
        )
    )
