"""Reports: labels on data items, written with their outbox events in one transaction."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway import outbox
from gateway.repository import Repository
from gateway.schemas import ImageReport, TextReport
from gateway.service.datasets import ensure_kind
from gateway.service.limits import check_count, check_text
from gateway.service.tags import tag_not_found
from gateway.service.text import bytes_hash, normalise, text_hash
from shared.db.models import Dataset
from shared.errors import BadRequest, KashfError
from shared.fetch import Fetcher
from shared.schemas.events import ReportEvent
from shared.settings import GatewaySettings
from shared.subjects import report_subject

_FETCH_CONCURRENCY = 8


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
    repo: Repository, account_id: int, tag_ids: Sequence[int], kind: str
) -> dict[int, Dataset]:
    """Dataset of each tag (NotFound for a tag this account lacks); fixes or checks each dataset's kind."""
    found = await repo.tags_of_account(account_id, tag_ids)
    for tag_id in tag_ids:
        if tag_id not in found:
            raise tag_not_found(tag_id)
    datasets = {dataset.id: dataset for _, dataset in found.values()}
    for dataset in sorted(datasets.values(), key=lambda d: d.id):
        await ensure_kind(repo, dataset, kind)
    return {tag_id: dataset for tag_id, (_, dataset) in found.items()}


async def _store(
    repo: Repository, labels: list[_Label], items: dict[tuple[int, str], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Upsert items and reports, stage one ReportEvent per written report; answers in request order."""
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
    report_ids = await repo.upsert_reports([rows[key] for key in sorted(rows)])
    await outbox.stage(
        repo,
        [
            (
                report_subject(row["dataset_id"]),
                f"report-{report_ids[key]}",
                ReportEvent(report_id=report_ids[key], **row),
            )
            for key, row in sorted(rows.items())
        ],
    )
    per_item = await repo.labels(sorted({item_ids[(lb.dataset_id, lb.content_hash)] for lb in labels}))
    out = []
    for label in labels:
        item_id = item_ids[(label.dataset_id, label.content_hash)]
        out.append({"report": compact_labels(per_item[item_id]), "id": item_id})
    return out


async def report_texts(
    repo: Repository, account_id: int, reports: Sequence[TextReport], settings: GatewaySettings
) -> list[dict[str, Any]]:
    check_count(reports, "reports", settings)
    for i, report in enumerate(reports):
        check_text(report.content, f"reports[{i}].content", settings)
        if not normalise(report.content):
            raise BadRequest(f"reports[{i}].content is empty", code="empty_text")
    datasets = await _datasets_of_tags(repo, account_id, [r.tag_id for r in reports], "text")
    labels: list[_Label] = []
    items: dict[tuple[int, str], dict[str, Any]] = {}
    for report in reports:
        dataset_id = datasets[report.tag_id].id
        digest = text_hash(report.content)
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
    return await _store(repo, labels, items)


async def _fetch_all(
    fetcher: Fetcher, urls: Sequence[str], settings: GatewaySettings
) -> list[tuple[bytes, str]]:
    """Every image's bytes and media type; the first failure fails the request, naming the URL's index."""
    slots = asyncio.Semaphore(_FETCH_CONCURRENCY)

    async def one(i: int, url: str) -> tuple[bytes, str]:
        async with slots:
            try:
                fetched = await fetcher.fetch(url, accept=("image/",), max_bytes=settings.max_image_bytes)
            except KashfError as exc:
                raise type(exc)(f"reports[{i}].image_url: {exc.detail}", code=exc.error_code) from exc
        return fetched.content, fetched.media_type

    return list(await asyncio.gather(*(one(i, url) for i, url in enumerate(urls))))


async def report_images(
    repo: Repository,
    account_id: int,
    reports: Sequence[ImageReport],
    settings: GatewaySettings,
    fetcher: Fetcher,
) -> list[dict[str, Any]]:
    """Fetch and keep each image (deduplicated by bytes hash), then store the reports.

    All or nothing: an image that cannot be fetched fails the request (502, or 413/415 from the
    fetcher) and nothing is stored.
    """
    check_count(reports, "reports", settings)
    datasets = await _datasets_of_tags(repo, account_id, [r.tag_id for r in reports], "image")
    # End the transaction (kind fixed, nothing else written) so no connection is held while fetching.
    await repo.session.commit()
    fetched = await _fetch_all(fetcher, [r.image_url for r in reports], settings)
    labels: list[_Label] = []
    items: dict[tuple[int, str], dict[str, Any]] = {}
    for report, (data, media_type) in zip(reports, fetched, strict=True):
        dataset_id = datasets[report.tag_id].id
        digest = bytes_hash(data)
        items.setdefault(
            (dataset_id, digest),
            {
                "dataset_id": dataset_id,
                "kind": "image",
                "content_hash": digest,
                "content": None,
                "source_url": report.image_url,
                "media": data,
                "media_type": media_type,
            },
        )
        labels.append(_Label(dataset_id, digest, report.tag_id, report.positive))
    return await _store(repo, labels, items)
