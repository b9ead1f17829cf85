"""Reports: labels on data items, written with their outbox events in one unit of work."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.infra.outbox import OutboxEvent
from gateway.schemas import (
    ImageFileReport,
    ImageReport,
    ItemReport,
    MediaItem,
    RejectedFile,
    ReportFileOut,
    ReportOut,
    TextReport,
)
from gateway.service.checks import check_count, check_text
from gateway.service.datasets import ensure_kind
from gateway.service.tags import tag_not_found
from gateway.state import AppState
from gateway.uow import UnitOfWork
from shared.bus import Bus
from shared.db.models import Dataset
from shared.errors import BadRequest, NotFound, from_wire
from shared.schemas.events import ReportEvent
from shared.schemas.media import EmbedImagesReply, EmbedImagesRequest, ImageEmbedding, MediaInput
from shared.settings import GatewaySettings
from shared.subjects import VISION_EMBED, report_subject
from shared.textnorm import dedup_key, normalize_text

# vision_service replies with a ~60 KB copy per image: 8 stay well under the 1 MiB NATS payload.
_EMBED_CHUNK = 8


@dataclass(frozen=True)
class _Label:
    """One report of the request, resolved to its dataset and item identity."""

    dataset_id: int
    content_hash: str
    tag_id: int
    positive: bool


def compact_labels(labels: Sequence[tuple[int, bool]]) -> str:
    """The reference's ``report`` string: ``[[39,true]]``."""
    return json.dumps([[tag_id, positive] for tag_id, positive in labels], separators=(",", ":"))


async def _datasets_of_tags(
    uow: UnitOfWork, account_id: int, tag_ids: Sequence[int], kind: str
) -> dict[int, Dataset]:
    """Dataset of each tag (NotFound for a tag this account lacks); fixes or checks each dataset's kind.
    The tags stay locked against deletion until the unit of work ends."""
    found = await uow.repo.tags_of_account(account_id, tag_ids, "reference")
    for tag_id in tag_ids:
        if tag_id not in found:
            raise tag_not_found(tag_id)
    datasets = {dataset.id: dataset for _, dataset in found.values()}
    for dataset in sorted(datasets.values(), key=lambda d: d.id):
        await ensure_kind(uow, dataset, kind)
    return {tag_id: dataset for tag_id, (_, dataset) in found.items()}


async def _store(
    uow: UnitOfWork, labels: list[_Label], items: dict[tuple[int, str], dict[str, Any]]
) -> tuple[list[ReportOut], dict[tuple[int, str], int]]:
    """Upsert items and reports, stage one ReportEvent per written report; answers in request order."""
    repo = uow.repo
    # Sorted writes: concurrent requests touching the same rows lock them in one order.
    item_ids = await repo.upsert_items([items[key] for key in sorted(items)])
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    for label in labels:  # a later report of the same item and tag replaces the earlier one
        item_id = item_ids[(label.dataset_id, label.content_hash)]
        rows[(item_id, label.tag_id)] = {
            "dataset_id": label.dataset_id,
            "item_id": item_id,
            "tag_id": label.tag_id,
            "positive": label.positive,
        }
    await _write_reports(uow, rows)
    per_item = await repo.labels(sorted({item_ids[(lb.dataset_id, lb.content_hash)] for lb in labels}))
    out = []
    for label in labels:
        item_id = item_ids[(label.dataset_id, label.content_hash)]
        out.append(ReportOut(report=compact_labels(per_item[item_id]), id=item_id))
    return out, item_ids


async def _write_reports(uow: UnitOfWork, rows: dict[tuple[int, int], dict[str, Any]]) -> None:
    """Upsert the (item, tag) labels and stage one ReportEvent per written report."""
    report_ids = await uow.repo.upsert_reports([rows[key] for key in sorted(rows)])
    uow.stage(*(
        OutboxEvent(report_subject(row["dataset_id"]), f"report-{report_ids[key]}",
                    ReportEvent(report_id=report_ids[key], **row))
        for key, row in sorted(rows.items())
    ))


async def report_items(
    uow: UnitOfWork, account_id: int, reports: Sequence[ItemReport], settings: GatewaySettings
) -> list[ReportOut]:
    """Label items already stored (a listed item, a suggestion, a kept input) by id, whatever their kind: no
    text is sent again and no image re-fetched or re-embedded."""
    check_count(reports, "reports", settings)
    tags = await uow.repo.tags_of_account(account_id, [r.tag_id for r in reports], "reference")
    items = await uow.repo.account_items(account_id, [r.item_id for r in reports])
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    for i, report in enumerate(reports):
        if report.tag_id not in tags:
            raise tag_not_found(report.tag_id)
        if report.item_id not in items:
            raise NotFound(f"item {report.item_id} not found", code="item_not_found")
        dataset_id = tags[report.tag_id][1].id
        if items[report.item_id] != dataset_id:
            raise BadRequest(f"reports[{i}]: item {report.item_id} is not in the dataset of tag {report.tag_id}",
                             code="wrong_dataset")
        rows[(report.item_id, report.tag_id)] = {
            "dataset_id": dataset_id, "item_id": report.item_id, "tag_id": report.tag_id, "positive": report.positive,
        }
    await uow.repo.mark_reported(sorted(items))
    await _write_reports(uow, rows)
    per_item = await uow.repo.labels(sorted(items))
    return [ReportOut(report=compact_labels(per_item[r.item_id]), id=r.item_id) for r in reports]


async def report_texts(
    uow: UnitOfWork, account_id: int, reports: Sequence[TextReport], settings: GatewaySettings
) -> list[ReportOut]:
    check_count(reports, "reports", settings)
    for i, report in enumerate(reports):
        check_text(report.content, f"reports[{i}].content", settings)
        if not normalize_text(report.content):
            raise BadRequest(f"reports[{i}].content is empty", code="empty_text")
    datasets = await _datasets_of_tags(uow, account_id, [r.tag_id for r in reports], "text")
    labels: list[_Label] = []
    items: dict[tuple[int, str], dict[str, Any]] = {}
    for report in reports:
        dataset_id = datasets[report.tag_id].id
        digest = dedup_key(report.content)
        items.setdefault(
            (dataset_id, digest),
            {
                "dataset_id": dataset_id,
                "kind": "text",
                "content_hash": digest,
                "content": report.content.strip(),
            },
        )
        labels.append(_Label(dataset_id, digest, report.tag_id, report.positive))
    out, _ = await _store(uow, labels, items)
    return out


async def _embed(
    bus: Bus, images: Sequence[MediaInput], settings: GatewaySettings
) -> tuple[EmbedImagesReply, list[ImageEmbedding]]:
    """vision_service fetches or reads each image and returns its embedding, hash and a bounded copy;
    an image that failed carries its error."""
    chunks = [list(images[i:i + _EMBED_CHUNK]) for i in range(0, len(images), _EMBED_CHUNK)]
    replies = await asyncio.gather(*(
        bus.request(
            VISION_EMBED,
            EmbedImagesRequest(images=chunk, keep_copy=True),
            EmbedImagesReply,
            timeout_s=settings.vision_timeout_s,
            idempotent=True,  # fetching and embedding again on another replica changes nothing
        )
        for chunk in chunks
    ))
    return replies[0], [item for reply in replies for item in reply.items]


def _failed(item: ImageEmbedding) -> bool:
    return item.error is not None or item.vector is None or item.sha256 is None


async def _embed_all(
    bus: Bus, urls: Sequence[str], settings: GatewaySettings
) -> tuple[EmbedImagesReply, list[ImageEmbedding]]:
    """All or nothing: the first image that fails fails the request, naming its index."""
    first, items = await _embed(bus, [MediaInput(url=url) for url in urls], settings)
    for i, item in enumerate(items):
        if _failed(item):
            raise from_wire(item.error_status or 502, item.error_code or "fetch_failed",
                            f"reports[{i}].image_url: {item.error or 'no embedding'}")
    return first, items


async def report_images(state: AppState, account_id: int, reports: Sequence[ImageReport]) -> list[ReportOut]:
    """Embed and keep each image (a bounded copy, deduplicated by the original bytes' hash), then
    store the reports and embeddings, so a report stays valid after its URL goes away.
    """
    check_count(reports, "reports", state.settings)
    # Two units of work, so that no pooled connection is held while vision_service fetches and embeds:
    # the first resolves the tags (and fixes a new dataset's kind), the second checks them again (a tag may
    # have been deleted meanwhile) and stores what came back.
    tag_ids = [r.tag_id for r in reports]
    datasets = await state.transact(lambda uow: _datasets_of_tags(uow, account_id, tag_ids, "image"))
    first, embedded = await _embed_all(state.bus, [r.image_url for r in reports], state.settings)
    entries = [
        _Image(r.tag_id, r.positive, r.image_url, item) for r, item in zip(reports, embedded, strict=True)
    ]
    return await _store_images(state, account_id, datasets, first, entries)


@dataclass(frozen=True)
class _Image:
    """One embedded image of a report request, with its label."""

    tag_id: int
    positive: bool
    source_url: str | None
    embedded: ImageEmbedding


async def _store_images(
    state: AppState, account_id: int, datasets: dict[int, Dataset], model: EmbedImagesReply, images: list[_Image]
) -> list[ReportOut]:
    """Store items (with their copies), reports and embeddings in one unit of work; answers in order."""
    labels: list[_Label] = []
    items: dict[tuple[int, str], dict[str, Any]] = {}
    vectors: dict[tuple[int, str], bytes] = {}
    for image in images:
        item = image.embedded
        dataset_id = datasets[image.tag_id].id
        assert item.sha256 is not None and item.vector is not None
        key = (dataset_id, item.sha256)
        items.setdefault(key, {
            "dataset_id": dataset_id,
            "kind": "image",
            "content_hash": item.sha256,
            "content": None,
            "source_url": image.source_url,
            "media": item.copy_bytes,
            "media_type": item.copy_media_type,
        })
        vectors.setdefault(key, item.vector)
        labels.append(_Label(dataset_id, item.sha256, image.tag_id, image.positive))
    tag_ids = sorted({image.tag_id for image in images})

    async def store(uow: UnitOfWork) -> list[ReportOut]:
        await _datasets_of_tags(uow, account_id, tag_ids, "image")
        out, item_ids = await _store(uow, labels, items)
        await uow.repo.add_embeddings([
            {"item_id": item_ids[key], "model_id": model.model_id, "dim": model.dim, "vector": vector}
            for key, vector in sorted(vectors.items())
        ])
        return out

    return await state.transact(store)


async def report_image_files(
    state: AppState, account_id: int, form: ImageFileReport, files: Sequence[MediaItem | RejectedFile]
) -> list[ReportFileOut]:
    """Uploaded images, all with one label: each is decoded, kept and embedded like a reported URL, and
    one that fails (not an image, over a limit) is answered with its error while the others are stored."""
    check_count(files, "image_file", state.settings)
    tag_id = form.tag_id

    async def resolve(uow: UnitOfWork) -> dict[int, Dataset]:
        found = await uow.repo.tags_of_account(account_id, [tag_id])
        if form.dataset is not None and tag_id in found and found[tag_id][1].name != form.dataset:
            raise NotFound(f"tag {tag_id} not found in dataset '{form.dataset}'", code="tag_not_found")
        return await _datasets_of_tags(uow, account_id, [tag_id], "image")

    datasets = await state.transact(resolve)
    sent = [f for f in files if isinstance(f, MediaItem)]
    embedded: list[ImageEmbedding] = []
    stored: dict[int, ReportOut] = {}  # by position among the files sent (two uploads may share a name)
    if sent:
        model, embedded = await _embed(state.bus, [f.ref for f in sent], state.settings)
        good = [i for i, item in enumerate(embedded) if not _failed(item)]
        if good:
            images = [_Image(tag_id, form.positive, None, embedded[i]) for i in good]
            answers = await _store_images(state, account_id, datasets, model, images)
            stored = dict(zip(good, answers, strict=True))
    out: list[ReportFileOut] = []
    sent_index = 0
    for file in files:
        if isinstance(file, RejectedFile):
            out.append(ReportFileOut(image_file=file.name, error=file.error))
            continue
        if (answer := stored.get(sent_index)) is not None:
            out.append(ReportFileOut(image_file=file.name, report=answer.report, id=answer.id))
        else:
            out.append(ReportFileOut(image_file=file.name, error=embedded[sent_index].error or "no embedding"))
        sent_index += 1
    return out
