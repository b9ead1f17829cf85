"""``Client`` (blocking) and ``AsyncClient``: every endpoint of the Kashf API, typed, with retries and chunking.

with Client() as kashf:  # KASHF_URL (default http://127.0.0.1:8000) and KASHF_TOKEN
    print(kashf.tag_texts("reviews", ["great phone, buy it"]))
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from kashf_client import models as m
from kashf_client._core import (
    DEFAULT_URL,
    UNSET,
    Call,
    FileInput,
    Limits,
    Plan,
    Plans,
    Retry,
    transport_error,
)
from kashf_client.errors import KashfError

T = TypeVar("T")
C = TypeVar("C", bound="_Base")
# Called before each retry with the error that caused it and the seconds it will wait.
RetryHook = Callable[[KashfError, float], None]


class _Base:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 120.0,
        retry: Retry | None = None,
        limits: Limits | None = None,
        on_retry: RetryHook | None = None,
    ) -> None:
        token = token or os.environ.get("KASHF_TOKEN")
        if not token:
            raise KashfError(0, "no_token", "no API token: pass token= or set KASHF_TOKEN")
        self.url = (url or os.environ.get("KASHF_URL") or DEFAULT_URL).rstrip("/")
        self.timeout = timeout
        self.retry = retry or Retry()
        self.limits = limits or Limits()
        self.on_retry = on_retry
        self.retries = 0  # calls sent again so far (429s, 5xx, connection errors)
        self._headers = {"Authorization": f"Token {token}", "User-Agent": "kashf-client/0.1"}
        self._plans = Plans(self.limits)

    def _retrying(self, error: KashfError, attempt: int) -> float:
        delay = self.retry.delay(attempt, error.retry_after)
        self.retries += 1
        if self.on_retry is not None:
            self.on_retry(error, delay)
        return delay

    @staticmethod
    def _check(response: httpx.Response) -> KashfError | None:
        return None if response.is_success else KashfError.from_response(response)


def _stream_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + ".part")


class Client(_Base):
    """Blocking client; ``transport`` (an httpx transport) is for tests."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 120.0,
        retry: Retry | None = None,
        limits: Limits | None = None,
        on_retry: RetryHook | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, token, timeout=timeout, retry=retry, limits=limits, on_retry=on_retry)
        self._http = httpx.Client(base_url=self.url, headers=self._headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A raw call (httpx's arguments) with the client's auth and retries; an error answer raises."""
        return self._send(Call(method, path), kwargs)

    def _send(self, call: Call, kwargs: dict[str, Any] | None = None) -> httpx.Response:
        kwargs = call.request_kwargs() if kwargs is None else kwargs
        attempt = 0
        while True:
            try:
                response = self._exchange(call, kwargs)
            except httpx.TransportError as exc:
                error = transport_error(exc)
                if not self.retry.retries_transport(call, exc, attempt):
                    raise error from exc
            else:
                error_or_none = self._check(response)
                if error_or_none is None:
                    return response
                error = error_or_none
                if not self.retry.retries_error(call, error, attempt):
                    raise error
            time.sleep(self._retrying(error, attempt))
            attempt += 1

    def _exchange(self, call: Call, kwargs: dict[str, Any]) -> httpx.Response:
        if call.stream_to is None:
            return self._http.request(call.method, call.path, **kwargs)
        with self._http.stream(call.method, call.path, **kwargs) as response:
            if not response.is_success:
                response.read()
                return response
            part = _stream_target(call.stream_to)
            with part.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
            part.replace(call.stream_to)
            return response

    def _drive(self, plan: Plan[T]) -> T:
        try:
            call = next(plan)
            while True:
                try:
                    response = self._send(call)
                except KashfError as exc:
                    call = plan.throw(exc)
                else:
                    call = plan.send(response)
        except StopIteration as stop:
            result: T = stop.value
            return result

    def iter_items(self, dataset: str, *, tag_id: int | None = None, page_size: int = 200) -> Iterator[m.Item]:
        """Every item of the dataset (or of one tag), newest first, page after page."""
        cursor: str | None = None
        while True:
            page = self.list_items(dataset, tag_id=tag_id, limit=page_size, cursor=cursor)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def wait_trained(self, dataset: str, *, timeout_s: float = 600.0, poll_s: float = 1.0) -> m.DatasetInfo:
        """Poll dataset_info until the dataset is trained or failed (a KashfError with code timeout after
        ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.dataset_info(dataset)
            if info.state in ("trained", "failed"):
                return info
            if time.monotonic() > deadline:
                raise KashfError(0, "timeout", f"dataset {dataset!r} still {info.state} after {timeout_s:g} s")
            time.sleep(poll_s)

    def tag_texts(
        self, dataset: str, contents: Sequence[str], *, top_k: int | None = None, min_probability: float | None = None
    ) -> list[m.TextTags]:
        """Tag texts; any number, sent in chunks under the server's limits."""
        return self._drive(self._plans.tag_texts(dataset, contents, top_k, min_probability))

    def tag_images(
        self, dataset: str, image_urls: Sequence[str], *, top_k: int | None = None, min_probability: float | None = None
    ) -> list[m.ImageTags]:
        """Tag images by URL; a URL the server cannot fetch has ``error`` set."""
        return self._drive(self._plans.tag_images(dataset, image_urls, top_k, min_probability))

    def tag_image_files(
        self,
        dataset: str,
        files: Iterable[FileInput],
        *,
        top_k: int | None = None,
        min_probability: float | None = None,
    ) -> list[m.ImageTags]:
        """Tag images uploaded from paths or ``(name, bytes)``."""
        return self._drive(self._plans.tag_image_files(dataset, files, top_k, min_probability))

    def tag_video_frames(
        self,
        dataset: str,
        video_urls: Sequence[str],
        *,
        every_ms: int = 1000,
        duration: float | None = None,
        min_frame_diff: float = 0,
        top_k: int | None = None,
        min_probability: float | None = None,
    ) -> list[m.VideoTags]:
        """Tag sampled frames of videos by URL."""
        return self._drive(
            self._plans.tag_video_frames(
                dataset, video_urls, every_ms, duration, min_frame_diff, top_k, min_probability
            )
        )

    def tag_video_files(
        self,
        dataset: str,
        files: Iterable[FileInput],
        *,
        every_ms: int = 1000,
        duration: float | None = None,
        min_frame_diff: float = 0,
        top_k: int | None = None,
        min_probability: float | None = None,
    ) -> list[m.VideoTags]:
        """Tag sampled frames of uploaded videos."""
        return self._drive(
            self._plans.tag_video_files(dataset, files, every_ms, duration, min_frame_diff, top_k, min_probability)
        )

    def start_video_job(
        self,
        dataset: str,
        video_urls: Sequence[str],
        *,
        every_ms: int = 1000,
        duration: float | None = None,
        min_frame_diff: float = 0,
    ) -> m.VideoJobQueued:
        """tag_video_frames with ``async``: poll ``video_job`` for the result."""
        return self._drive(self._plans.start_video_job(dataset, video_urls, every_ms, duration, min_frame_diff))

    def video_job(self, job_id: str) -> m.VideoJob:
        """State and result of an asynchronous video job."""
        return self._drive(self._plans.video_job(job_id))

    def report_text_tags(self, reports: Sequence[m.TextReport]) -> list[m.Report]:
        """Label texts (chunked); a later label of the same text and tag wins."""
        return self._drive(self._plans.report_text_tags(reports))

    def report_image_tags(self, reports: Sequence[m.ImageReport]) -> list[m.Report]:
        """Label images by URL."""
        return self._drive(self._plans.report_image_tags(reports))

    def report_image_files(
        self, tag_id: int, files: Iterable[FileInput], *, positive: bool = True, dataset: str | None = None
    ) -> list[m.Report]:
        """Label uploaded images with one tag; a file the server refused has ``error`` set."""
        return self._drive(self._plans.report_image_files(tag_id, files, positive, dataset))

    def report_items(self, reports: Sequence[m.ItemReport]) -> list[m.Report]:
        """Label stored items by id (texts and images alike; nothing is sent again)."""
        return self._drive(self._plans.report_items(reports))

    def delete_report(
        self, report_id: int | None = None, *, item_id: int | None = None, tag_id: int | None = None
    ) -> m.Deleted:
        """Undo a report, by its id (``Item.report_ids``) or by item and tag; the next head forgets it."""
        return self._drive(self._plans.delete_report(report_id, item_id, tag_id))

    def create_dataset(
        self, dataset: str, *, title: str | None = None, kind: str | None = None, keep_inputs: bool | None = None
    ) -> m.Dataset:
        """Create a dataset (``kind`` text or image)."""
        return self._drive(self._plans.create_dataset(dataset, title, kind, keep_inputs))

    def update_dataset(self, dataset: str, *, title: str | None = None, keep_inputs: bool | None = None) -> m.Dataset:
        """Change a dataset's title or keep_inputs."""
        return self._drive(self._plans.update_dataset(dataset, title, keep_inputs))

    def list_datasets(self) -> list[m.Dataset]:
        """This account's datasets."""
        return self._drive(self._plans.list_datasets())

    def train_dataset(self, dataset: str, *, force: bool = False) -> m.TrainState:
        """Queue a refit; ``force`` promotes it even when worse than the live head."""
        return self._drive(self._plans.train_dataset(dataset, force))

    def dataset_info(self, dataset: str, *, tags: bool = True) -> m.DatasetInfo:
        """State, counts, evaluation and tags of a dataset."""
        return self._drive(self._plans.dataset_info(dataset, tags))

    def create_tag(self, dataset: str, title: str) -> m.Tag:
        """Create a tag (and its dataset when missing)."""
        return self._drive(self._plans.create_tag(dataset, title))

    def update_tag(
        self,
        tag_id: int,
        *,
        dataset: str | None = None,
        title: str | None = None,
        active: bool | None = None,
        threshold: float | None = UNSET,
    ) -> m.Tag:
        """Rename, (de)activate, or set a threshold (None: back to the learned one)."""
        return self._drive(self._plans.update_tag(tag_id, dataset, title, active, threshold))

    def delete_tag(self, tag_id: int) -> m.DeletedTag:
        """Delete a tag with its reports."""
        return self._drive(self._plans.delete_tag(tag_id))

    def list_items(
        self, dataset: str, *, tag_id: int | None = None, limit: int | None = None, cursor: str | None = None
    ) -> m.ItemPage:
        """One page of a dataset's items, newest first."""
        return self._drive(self._plans.list_items(dataset, tag_id, limit, cursor))

    def item_image(self, item_id: int) -> bytes:
        """The kept JPEG copy of an image item."""
        return self._drive(self._plans.item_image(item_id))

    def list_versions(self, dataset: str) -> list[m.Version]:
        """The dataset's head versions, newest first."""
        return self._drive(self._plans.list_versions(dataset))

    def use_version(self, dataset: str, version: int) -> m.DatasetInfo:
        """Make a version live (rollback)."""
        return self._drive(self._plans.use_version(dataset, version))

    def export_dataset(self, dataset: str, path: str | os.PathLike[str]) -> Path:
        """Stream the dataset's export zip into ``path``."""
        return self._drive(self._plans.export_dataset(dataset, Path(path)))

    def create_webhook(self, url: str, *, dataset: str | None = None, events: Sequence[str] | None = None) -> m.Webhook:
        """Register a webhook; its ``secret`` is shown only here."""
        return self._drive(self._plans.create_webhook(url, dataset, events))

    def list_webhooks(self) -> list[m.Webhook]:
        """This account's webhooks."""
        return self._drive(self._plans.list_webhooks())

    def delete_webhook(self, webhook_id: int | str) -> m.Deleted:
        """Delete a webhook."""
        return self._drive(self._plans.delete_webhook(webhook_id))

    def suggest_labels(
        self, dataset: str, *, tag_id: int | None = None, limit: int | None = None
    ) -> list[m.Suggestion]:
        """Items worth labelling next (uncertain) and likely label mistakes (suspect)."""
        return self._drive(self._plans.suggest_labels(dataset, tag_id, limit))

    def search(
        self, dataset: str, *, text: str | None = None, image_url: str | None = None, limit: int | None = None
    ) -> list[m.SearchHit]:
        """Stored items nearest to a text or an image."""
        return self._drive(self._plans.search(dataset, text, image_url, limit))


class AsyncClient(_Base):
    """The same calls as ``Client``, awaitable; one instance may serve many concurrent tasks."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 120.0,
        retry: Retry | None = None,
        limits: Limits | None = None,
        on_retry: RetryHook | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 32,
    ) -> None:
        super().__init__(url, token, timeout=timeout, retry=retry, limits=limits, on_retry=on_retry)
        pool = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=timeout, transport=transport, limits=pool
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A raw call (httpx's arguments) with the client's auth and retries; an error answer raises."""
        return await self._send(Call(method, path), kwargs)

    async def _send(self, call: Call, kwargs: dict[str, Any] | None = None) -> httpx.Response:
        kwargs = call.request_kwargs() if kwargs is None else kwargs
        attempt = 0
        while True:
            try:
                response = await self._exchange(call, kwargs)
            except httpx.TransportError as exc:
                error = transport_error(exc)
                if not self.retry.retries_transport(call, exc, attempt):
                    raise error from exc
            else:
                error_or_none = self._check(response)
                if error_or_none is None:
                    return response
                error = error_or_none
                if not self.retry.retries_error(call, error, attempt):
                    raise error
            await asyncio.sleep(self._retrying(error, attempt))
            attempt += 1

    async def _exchange(self, call: Call, kwargs: dict[str, Any]) -> httpx.Response:
        if call.stream_to is None:
            return await self._http.request(call.method, call.path, **kwargs)
        async with self._http.stream(call.method, call.path, **kwargs) as response:
            if not response.is_success:
                await response.aread()
                return response
            part = _stream_target(call.stream_to)
            # Small synchronous writes between network reads: an export is one file, not a hot path.
            with part.open("wb") as out:
                async for chunk in response.aiter_bytes():
                    out.write(chunk)
            part.replace(call.stream_to)
            return response

    async def _drive(self, plan: Plan[T]) -> T:
        try:
            call = next(plan)
            while True:
                try:
                    response = await self._send(call)
                except KashfError as exc:
                    call = plan.throw(exc)
                else:
                    call = plan.send(response)
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def iter_items(
        self, dataset: str, *, tag_id: int | None = None, page_size: int = 200
    ) -> AsyncIterator[m.Item]:
        """Every item of the dataset (or of one tag), newest first, page after page."""
        cursor: str | None = None
        while True:
            page = await self.list_items(dataset, tag_id=tag_id, limit=page_size, cursor=cursor)
            for item in page.items:
                yield item
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def wait_trained(self, dataset: str, *, timeout_s: float = 600.0, poll_s: float = 1.0) -> m.DatasetInfo:
        """Poll dataset_info until the dataset is trained or failed."""
        deadline = time.monotonic() + timeout_s
        while True:
            info = await self.dataset_info(dataset)
            if info.state in ("trained", "failed"):
                return info
            if time.monotonic() > deadline:
                raise KashfError(0, "timeout", f"dataset {dataset!r} still {info.state} after {timeout_s:g} s")
            await asyncio.sleep(poll_s)

    async def tag_texts(
        self, dataset: str, contents: Sequence[str], *, top_k: int | None = None, min_probability: float | None = None
    ) -> list[m.TextTags]:
        """Tag texts; any number, sent in chunks under the server's limits."""
        return await self._drive(self._plans.tag_texts(dataset, contents, top_k, min_probability))

    async def tag_images(
        self, dataset: str, image_urls: Sequence[str], *, top_k: int | None = None, min_probability: float | None = None
    ) -> list[m.ImageTags]:
        """Tag images by URL; a URL the server cannot fetch has ``error`` set."""
        return await self._drive(self._plans.tag_images(dataset, image_urls, top_k, min_probability))

    async def tag_image_files(
        self,
        dataset: str,
        files: Iterable[FileInput],
        *,
        top_k: int | None = None,
        min_probability: float | None = None,
    ) -> list[m.ImageTags]:
        """Tag images uploaded from paths or ``(name, bytes)``."""
        return await self._drive(self._plans.tag_image_files(dataset, files, top_k, min_probability))

    async def tag_video_frames(
        self,
        dataset: str,
        video_urls: Sequence[str],
        *,
        every_ms: int = 1000,
        duration: float | None = None,
        min_frame_diff: float = 0,
        top_k: int | None = None,
        min_probability: float | None = None,
    ) -> list[m.VideoTags]:
        """Tag sampled frames of videos by URL."""
        return await self._drive(
            self._plans.tag_video_frames(
                dataset, video_urls, every_ms, duration, min_frame_diff, top_k, min_probability
            )
        )

    async def tag_video_files(
        self,
        dataset: str,
        files: Iterable[FileInput],
        *,
        every_ms: int = 1000,
        duration: float | None = None,
        min_frame_diff: float = 0,
        top_k: int | None = None,
        min_probability: float | None = None,
    ) -> list[m.VideoTags]:
        """Tag sampled frames of uploaded videos."""
        return await self._drive(
            self._plans.tag_video_files(dataset, files, every_ms, duration, min_frame_diff, top_k, min_probability)
        )

    async def start_video_job(
        self,
        dataset: str,
        video_urls: Sequence[str],
        *,
        every_ms: int = 1000,
        duration: float | None = None,
        min_frame_diff: float = 0,
    ) -> m.VideoJobQueued:
        """tag_video_frames with ``async``: poll ``video_job`` for the result."""
        return await self._drive(self._plans.start_video_job(dataset, video_urls, every_ms, duration, min_frame_diff))

    async def video_job(self, job_id: str) -> m.VideoJob:
        """State and result of an asynchronous video job."""
        return await self._drive(self._plans.video_job(job_id))

    async def report_text_tags(self, reports: Sequence[m.TextReport]) -> list[m.Report]:
        """Label texts (chunked); a later label of the same text and tag wins."""
        return await self._drive(self._plans.report_text_tags(reports))

    async def report_image_tags(self, reports: Sequence[m.ImageReport]) -> list[m.Report]:
        """Label images by URL."""
        return await self._drive(self._plans.report_image_tags(reports))

    async def report_image_files(
        self, tag_id: int, files: Iterable[FileInput], *, positive: bool = True, dataset: str | None = None
    ) -> list[m.Report]:
        """Label uploaded images with one tag; a file the server refused has ``error`` set."""
        return await self._drive(self._plans.report_image_files(tag_id, files, positive, dataset))

    async def report_items(self, reports: Sequence[m.ItemReport]) -> list[m.Report]:
        """Label stored items by id (texts and images alike; nothing is sent again)."""
        return await self._drive(self._plans.report_items(reports))

    async def delete_report(
        self, report_id: int | None = None, *, item_id: int | None = None, tag_id: int | None = None
    ) -> m.Deleted:
        """Undo a report, by its id (``Item.report_ids``) or by item and tag; the next head forgets it."""
        return await self._drive(self._plans.delete_report(report_id, item_id, tag_id))

    async def create_dataset(
        self, dataset: str, *, title: str | None = None, kind: str | None = None, keep_inputs: bool | None = None
    ) -> m.Dataset:
        """Create a dataset (``kind`` text or image)."""
        return await self._drive(self._plans.create_dataset(dataset, title, kind, keep_inputs))

    async def update_dataset(
        self, dataset: str, *, title: str | None = None, keep_inputs: bool | None = None
    ) -> m.Dataset:
        """Change a dataset's title or keep_inputs."""
        return await self._drive(self._plans.update_dataset(dataset, title, keep_inputs))

    async def list_datasets(self) -> list[m.Dataset]:
        """This account's datasets."""
        return await self._drive(self._plans.list_datasets())

    async def train_dataset(self, dataset: str, *, force: bool = False) -> m.TrainState:
        """Queue a refit; ``force`` promotes it even when worse than the live head."""
        return await self._drive(self._plans.train_dataset(dataset, force))

    async def dataset_info(self, dataset: str, *, tags: bool = True) -> m.DatasetInfo:
        """State, counts, evaluation and tags of a dataset."""
        return await self._drive(self._plans.dataset_info(dataset, tags))

    async def create_tag(self, dataset: str, title: str) -> m.Tag:
        """Create a tag (and its dataset when missing)."""
        return await self._drive(self._plans.create_tag(dataset, title))

    async def update_tag(
        self,
        tag_id: int,
        *,
        dataset: str | None = None,
        title: str | None = None,
        active: bool | None = None,
        threshold: float | None = UNSET,
    ) -> m.Tag:
        """Rename, (de)activate, or set a threshold (None: back to the learned one)."""
        return await self._drive(self._plans.update_tag(tag_id, dataset, title, active, threshold))

    async def delete_tag(self, tag_id: int) -> m.DeletedTag:
        """Delete a tag with its reports."""
        return await self._drive(self._plans.delete_tag(tag_id))

    async def list_items(
        self, dataset: str, *, tag_id: int | None = None, limit: int | None = None, cursor: str | None = None
    ) -> m.ItemPage:
        """One page of a dataset's items, newest first."""
        return await self._drive(self._plans.list_items(dataset, tag_id, limit, cursor))

    async def item_image(self, item_id: int) -> bytes:
        """The kept JPEG copy of an image item."""
        return await self._drive(self._plans.item_image(item_id))

    async def list_versions(self, dataset: str) -> list[m.Version]:
        """The dataset's head versions, newest first."""
        return await self._drive(self._plans.list_versions(dataset))

    async def use_version(self, dataset: str, version: int) -> m.DatasetInfo:
        """Make a version live (rollback)."""
        return await self._drive(self._plans.use_version(dataset, version))

    async def export_dataset(self, dataset: str, path: str | os.PathLike[str]) -> Path:
        """Stream the dataset's export zip into ``path``."""
        return await self._drive(self._plans.export_dataset(dataset, Path(path)))

    async def create_webhook(
        self, url: str, *, dataset: str | None = None, events: Sequence[str] | None = None
    ) -> m.Webhook:
        """Register a webhook; its ``secret`` is shown only here."""
        return await self._drive(self._plans.create_webhook(url, dataset, events))

    async def list_webhooks(self) -> list[m.Webhook]:
        """This account's webhooks."""
        return await self._drive(self._plans.list_webhooks())

    async def delete_webhook(self, webhook_id: int | str) -> m.Deleted:
        """Delete a webhook."""
        return await self._drive(self._plans.delete_webhook(webhook_id))

    async def suggest_labels(
        self, dataset: str, *, tag_id: int | None = None, limit: int | None = None
    ) -> list[m.Suggestion]:
        """Items worth labelling next (uncertain) and likely label mistakes (suspect)."""
        return await self._drive(self._plans.suggest_labels(dataset, tag_id, limit))

    async def search(
        self, dataset: str, *, text: str | None = None, image_url: str | None = None, limit: int | None = None
    ) -> list[m.SearchHit]:
        """Stored items nearest to a text or an image."""
        return await self._drive(self._plans.search(dataset, text, image_url, limit))
