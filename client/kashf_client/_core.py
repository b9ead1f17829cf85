"""What the sync and async clients share, free of I/O: each endpoint is a *plan*, a generator that yields
the HTTP calls it needs (one, or one per chunk) and returns the typed answer; a client only sends them.
Chunking, learning the server's list limit from a 413 and decoding live here once."""

from __future__ import annotations

import json
import mimetypes
import os
import random
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from kashf_client import models as m
from kashf_client.errors import KashfError

T = TypeVar("T")
X = TypeVar("X")
R = TypeVar("R")

DEFAULT_URL = "http://127.0.0.1:8000"  # `make up` (devtools/stack.py) serves the gateway here

# A file to upload: a path, or (file name, bytes).
FileInput = str | os.PathLike[str] | tuple[str, bytes]
Multipart = list[tuple[str, tuple[str, bytes, str]]]


class _Unset:
    """Marks an argument left out, where None means something (update_tag's threshold: back to the learned one)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Call:
    """One HTTP request of a plan. ``idempotent``: safe to send again after a failure that may have reached
    the server (a create is not); ``stream_to``: write the answer's body to this file."""

    method: str
    path: str
    json: Any = None
    files: Multipart | None = None
    data: Mapping[str, str] | None = None
    idempotent: bool = True
    stream_to: Path | None = None

    def request_kwargs(self) -> dict[str, Any]:
        if self.files is not None:
            return {"files": self.files, "data": dict(self.data or {})}
        if self.json is not None:
            # UTF-8, not \u escapes: a Persian text is half the bytes, and the server's body limit is in bytes.
            body = json.dumps(self.json, ensure_ascii=False).encode()
            return {"content": body, "headers": {"Content-Type": "application/json"}}
        return {}


Plan = Generator[Call, httpx.Response, T]


@dataclass
class Limits:
    """What one request may carry. ``max_items`` starts at the server's default (KASHF_MAX_ITEMS) and is
    lowered when a 413 names a smaller one; the byte budgets stay under KASHF_MAX_BODY_BYTES (2 MiB) and
    KASHF_MAX_UPLOAD_BYTES (200 MiB) by default."""

    max_items: int = 256
    max_json_bytes: int = 1_500_000
    max_upload_bytes: int = 32 * 2**20


@dataclass(frozen=True)
class Retry:
    """Tries a call up to ``attempts`` times on 429, 502-504 and connection errors: after the server's
    Retry-After when it sends one, else exponential backoff with jitter."""

    attempts: int = 8
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 300.0
    statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 502, 503, 504}))

    def retries_error(self, call: Call, error: KashfError, attempt: int) -> bool:
        if attempt + 1 >= self.attempts or error.status not in self.statuses:
            return False
        if error.error == "fetch_failed":
            return False  # the server could not fetch the caller's URL: sending it again will not help
        if (error.retry_after or 0) > self.max_retry_after_s:
            return False
        # 429 and 503 are refusals before any work; a 502/504 may come after a create took effect.
        return call.idempotent or error.status in (429, 503)

    def retries_transport(self, call: Call, exc: httpx.TransportError, attempt: int) -> bool:
        if attempt + 1 >= self.attempts:
            return False
        return call.idempotent or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            # A little jitter on top, so parallel uploads that were refused together do not return together.
            return retry_after + random.uniform(0, 0.25 * max(retry_after, 0.2))
        return min(self.max_backoff_s, self.backoff_s * 2.0**attempt) * random.uniform(0.5, 1.0)


def transport_error(exc: httpx.TransportError) -> KashfError:
    kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection"
    return KashfError(0, kind, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def decode(model: Any, response: httpx.Response) -> Any:
    """The answer's JSON as ``model`` (a pydantic model or a ``list[...]`` type)."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_validate_json(response.content)
    return TypeAdapter(model).validate_json(response.content)


def read_file(item: FileInput) -> tuple[str, bytes, str]:
    """(file name, bytes, media type) for a multipart part."""
    if isinstance(item, tuple):
        name, content = item
    else:
        path = Path(item)
        name, content = path.name, path.read_bytes()
    return name, content, mimetypes.guess_type(name)[0] or "application/octet-stream"


def _batches(items: Sequence[X], start: int, max_items: int, max_bytes: int, size: Callable[[X], int]) -> int:
    """How many items from ``start`` fit one request (at least one: a single item over the budget is the
    server's to refuse, with its own 413)."""
    total, n = 0, 0
    for item in items[start : start + max(1, max_items)]:
        total += size(item)
        if n and total > max_bytes:
            break
        n += 1
    return max(n, 1)


def chunked(
    items: Sequence[X],
    limits: Limits,
    make: Callable[[Sequence[X]], Call],
    parse: Callable[[httpx.Response], list[R]],
    size: Callable[[X], int],
    max_bytes: int,
) -> Plan[list[R]]:
    """Send ``items`` in as many requests as the limits need, answers concatenated in order. A 413 naming a
    smaller KASHF_MAX_ITEMS than the chunk sent lowers ``limits.max_items`` and sends that chunk again split."""
    out: list[R] = []
    start = 0
    while start < len(items):
        n = _batches(items, start, limits.max_items, max_bytes, size)
        try:
            response = yield make(items[start : start + n])
        except KashfError as exc:
            limit = exc.item_limit()
            if limit is not None and 0 < limit < n:
                limits.max_items = limit
                continue
            raise
        out.extend(parse(response))
        start += n
    return out


def _json_size(item: Any) -> int:
    return len(json.dumps(item, ensure_ascii=False).encode()) + 2


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None and v is not UNSET}


def _form(values: Mapping[str, Any]) -> dict[str, str]:
    """Form fields as the gateway parses them: booleans as true/false, None left out."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def path_segment(value: int | str) -> str:
    return httpx.URL("/").copy_with(path="/" + str(value)).raw_path.decode()[1:]


class Plans:
    """Every endpoint of SPEC.md as a plan; ``limits`` is the client's (shared, learned from 413s)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def _one(self, call: Call, model: Any) -> Plan[Any]:
        response = yield call
        return decode(model, response)

    def _files(self, files: Iterable[FileInput], part: str) -> Multipart:
        return [(part, read_file(f)) for f in files]

    def _upload(self, path: str, part: str, files: Iterable[FileInput], fields: Mapping[str, Any],
                model: Any, idempotent: bool = True) -> Plan[list[Any]]:
        parts = self._files(files, part)
        form = _form(fields)
        return chunked(
            parts, self.limits,
            lambda chunk: Call("POST", path, files=list(chunk), data=form, idempotent=idempotent),
            lambda r: list(decode(model, r)), lambda p: len(p[1][1]), self.limits.max_upload_bytes,
        )

    def _json_list(self, path: str, key: str, values: Sequence[Any], body: dict[str, Any],
                   model: Any) -> Plan[list[Any]]:
        return chunked(
            values, self.limits, lambda chunk: Call("POST", path, json={**body, key: list(chunk)}),
            lambda r: list(decode(model, r)), _json_size, self.limits.max_json_bytes,
        )

    # Tagging

    def tag_texts(self, dataset: str, contents: Sequence[str], top_k: int | None,
                  min_probability: float | None) -> Plan[list[m.TextTags]]:
        body = _drop_none({"dataset": dataset, "top_k": top_k, "min_probability": min_probability})
        return self._json_list("/api/tag_texts/", "contents", contents, body, list[m.TextTags])

    def tag_images(self, dataset: str, image_urls: Sequence[str], top_k: int | None,
                   min_probability: float | None) -> Plan[list[m.ImageTags]]:
        body = _drop_none({"dataset": dataset, "top_k": top_k, "min_probability": min_probability})
        return self._json_list("/api/tag_images/", "image_urls", image_urls, body, list[m.ImageTags])

    def tag_image_files(self, dataset: str, files: Iterable[FileInput], top_k: int | None,
                        min_probability: float | None) -> Plan[list[m.ImageTags]]:
        fields = {"dataset": dataset, "top_k": top_k, "min_probability": min_probability}
        return self._upload("/api/tag_images/", "image_file", files, fields, list[m.ImageTags])

    def _video_body(self, dataset: str, every_ms: int, duration: float | None, min_frame_diff: float,
                    top_k: int | None, min_probability: float | None) -> dict[str, Any]:
        return _drop_none({"dataset": dataset, "every_ms": every_ms, "duration": duration,
                           "min_frame_diff": min_frame_diff, "top_k": top_k, "min_probability": min_probability})

    def tag_video_frames(self, dataset: str, video_urls: Sequence[str], every_ms: int, duration: float | None,
                         min_frame_diff: float, top_k: int | None,
                         min_probability: float | None) -> Plan[list[m.VideoTags]]:
        body = self._video_body(dataset, every_ms, duration, min_frame_diff, top_k, min_probability)
        return self._json_list("/api/tag_video_frames/", "video_urls", video_urls, body, list[m.VideoTags])

    def tag_video_files(self, dataset: str, files: Iterable[FileInput], every_ms: int, duration: float | None,
                        min_frame_diff: float, top_k: int | None,
                        min_probability: float | None) -> Plan[list[m.VideoTags]]:
        fields = self._video_body(dataset, every_ms, duration, min_frame_diff, top_k, min_probability)
        return self._upload("/api/tag_video_frames/", "video_file", files, fields, list[m.VideoTags])

    def start_video_job(self, dataset: str, video_urls: Sequence[str], every_ms: int, duration: float | None,
                        min_frame_diff: float) -> Plan[m.VideoJobQueued]:
        body = {**self._video_body(dataset, every_ms, duration, min_frame_diff, None, None), "async": True}
        return self._one(Call("POST", "/api/tag_video_frames/", json={**body, "video_urls": list(video_urls)},
                              idempotent=False), m.VideoJobQueued)

    def video_job(self, job_id: str) -> Plan[m.VideoJob]:
        return self._one(Call("POST", "/api/video_job/", json={"job_id": job_id}), m.VideoJob)

    # Reports

    def report_text_tags(self, reports: Sequence[m.TextReport]) -> Plan[list[m.Report]]:
        bodies = [r.model_dump() for r in reports]
        return chunked(bodies, self.limits, lambda chunk: Call("POST", "/api/report_text_tags/", json=list(chunk)),
                       lambda r: list(decode(list[m.Report], r)), _json_size, self.limits.max_json_bytes)

    def report_image_tags(self, reports: Sequence[m.ImageReport]) -> Plan[list[m.Report]]:
        bodies = [r.model_dump() for r in reports]
        return chunked(bodies, self.limits, lambda chunk: Call("POST", "/api/report_image_tags/", json=list(chunk)),
                       lambda r: list(decode(list[m.Report], r)), _json_size, self.limits.max_json_bytes)

    def report_items(self, reports: Sequence[m.ItemReport]) -> Plan[list[m.Report]]:
        bodies = [r.model_dump() for r in reports]
        return chunked(bodies, self.limits, lambda chunk: Call("POST", "/api/report_items/", json=list(chunk)),
                       lambda r: list(decode(list[m.Report], r)), _json_size, self.limits.max_json_bytes)

    def report_image_files(self, tag_id: int, files: Iterable[FileInput], positive: bool,
                           dataset: str | None) -> Plan[list[m.Report]]:
        fields = {"tag_id": tag_id, "positive": positive, "dataset": dataset}
        return self._upload("/api/report_image_tags/", "image_file", files, fields, list[m.Report])

    def delete_report(self, report_id: int | None, item_id: int | None, tag_id: int | None) -> Plan[m.Deleted]:
        if (report_id is None) == (item_id is None or tag_id is None):
            raise ValueError("delete_report needs a report id, or both item_id and tag_id")
        body = {"id": report_id} if report_id is not None else {"item_id": item_id, "tag_id": tag_id}
        return self._one(Call("POST", "/api/delete_report/", json=body), m.Deleted)

    # Datasets and tags

    def create_dataset(self, dataset: str, title: str | None, kind: str | None,
                       keep_inputs: bool | None) -> Plan[m.Dataset]:
        body = _drop_none({"dataset": dataset, "title": title, "kind": kind, "keep_inputs": keep_inputs})
        return self._one(Call("POST", "/api/create_dataset/", json=body, idempotent=False), m.Dataset)

    def update_dataset(self, dataset: str, title: str | None, keep_inputs: bool | None) -> Plan[m.Dataset]:
        body = _drop_none({"dataset": dataset, "title": title, "keep_inputs": keep_inputs})
        return self._one(Call("POST", "/api/update_dataset/", json=body), m.Dataset)

    def list_datasets(self) -> Plan[list[m.Dataset]]:
        return self._one(Call("POST", "/api/list_datasets/", json={}), list[m.Dataset])

    def train_dataset(self, dataset: str, force: bool) -> Plan[m.TrainState]:
        body = {"dataset": dataset, "force": True} if force else {"dataset": dataset}
        return self._one(Call("POST", "/api/train_dataset/", json=body), m.TrainState)

    def dataset_info(self, dataset: str, tags: bool) -> Plan[m.DatasetInfo]:
        return self._one(Call("POST", "/api/dataset_info/", json={"dataset": dataset, "tags": tags}), m.DatasetInfo)

    def create_tag(self, dataset: str, title: str) -> Plan[m.Tag]:
        call = Call("POST", "/api/create_tag/", json={"dataset": dataset, "title": title}, idempotent=False)
        return self._one(call, m.Tag)

    def update_tag(self, tag_id: int, dataset: str | None, title: str | None, active: bool | None,
                   threshold: float | None) -> Plan[m.Tag]:
        body = _drop_none({"dataset": dataset, "tag_id": tag_id, "title": title, "active": active})
        if threshold is not UNSET:
            body["threshold"] = threshold  # None resets the tag to its learned threshold
        return self._one(Call("POST", "/api/update_tag/", json=body), m.Tag)

    def delete_tag(self, tag_id: int) -> Plan[m.DeletedTag]:
        return self._one(Call("POST", "/api/delete_tag/", json={"tag_id": tag_id}, idempotent=False), m.DeletedTag)

    # Browsing, versions, export

    def list_items(self, dataset: str, tag_id: int | None, limit: int | None,
                   cursor: str | None) -> Plan[m.ItemPage]:
        body = _drop_none({"dataset": dataset, "tag_id": tag_id, "limit": limit, "cursor": cursor})
        return self._one(Call("POST", "/api/list_items/", json=body), m.ItemPage)

    def item_image(self, item_id: int) -> Plan[bytes]:
        response = yield Call("GET", f"/api/items/{path_segment(item_id)}/image")
        return response.content

    def list_versions(self, dataset: str) -> Plan[list[m.Version]]:
        return self._one(Call("POST", "/api/list_versions/", json={"dataset": dataset}), list[m.Version])

    def use_version(self, dataset: str, version: int) -> Plan[m.DatasetInfo]:
        call = Call("POST", "/api/use_version/", json={"dataset": dataset, "version": version})
        return self._one(call, m.DatasetInfo)

    def export_dataset(self, dataset: str, path: Path) -> Plan[Path]:
        yield Call("POST", "/api/export_dataset/", json={"dataset": dataset}, stream_to=path)
        return path

    # Webhooks, suggestions, search

    def create_webhook(self, url: str, dataset: str | None, events: Sequence[str] | None) -> Plan[m.Webhook]:
        body = _drop_none({"url": url, "dataset": dataset, "events": list(events) if events else None})
        return self._one(Call("POST", "/api/create_webhook/", json=body, idempotent=False), m.Webhook)

    def list_webhooks(self) -> Plan[list[m.Webhook]]:
        return self._one(Call("POST", "/api/list_webhooks/", json={}), list[m.Webhook])

    def delete_webhook(self, webhook_id: int | str) -> Plan[m.Deleted]:
        return self._one(Call("POST", "/api/delete_webhook/", json={"id": webhook_id}), m.Deleted)

    def suggest_labels(self, dataset: str, tag_id: int | None, limit: int | None) -> Plan[list[m.Suggestion]]:
        body = _drop_none({"dataset": dataset, "tag_id": tag_id, "limit": limit})
        return self._one(Call("POST", "/api/suggest_labels/", json=body), list[m.Suggestion])

    def search(self, dataset: str, text: str | None, image_url: str | None,
               limit: int | None) -> Plan[list[m.SearchHit]]:
        if (text is None) == (image_url is None):
            raise ValueError("search needs exactly one of text and image_url")
        body = _drop_none({"dataset": dataset, "text": text, "image_url": image_url, "limit": limit})
        return self._one(Call("POST", "/api/search/", json=body), list[m.SearchHit])
