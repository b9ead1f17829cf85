"""``kashf import``: a labelled source into a dataset, in parallel chunks, resumable.

Every upload unit is one (item, tag) label. Once the server acknowledges a chunk, its units' keys are appended
to a state file (``~/.cache/kashf/imports/`` or ``KASHF_CACHE_DIR``), so a re-run sends only what was never
acknowledged; reports are idempotent on the server (same item and tag: replaced), so a chunk cut off before its
state line was written is simply sent again."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kashf_client import models as m
from kashf_client.client import AsyncClient
from kashf_client.errors import KashfError
from kashf_client.sources import Example, Source

# Errors after which nothing else can succeed: the import stops instead of failing every chunk the same way.
FATAL_STATUSES = frozenset({401, 403, 404})


@dataclass(frozen=True)
class Unit:
    """One label to send: an example and the id of one of its tags."""

    example: Example
    tag: str
    tag_id: int

    @property
    def key(self) -> str:
        return f"{self.example.key}:{self.tag}"


@dataclass
class ImportSummary:
    dataset: str
    kind: str
    examples: int
    units: int
    already_done: int = 0
    uploaded: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    created_dataset: bool = False
    created_tags: list[str] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    seconds: float = 0.0
    state_file: Path | None = None


def cache_dir() -> Path:
    base = os.environ.get("KASHF_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "kashf")
    return Path(base) / "imports"


def state_path(url: str, token: str, dataset: str) -> Path:
    """One state file per server, account (a hash of the token, never the token) and dataset."""
    key = hashlib.sha256(f"{url}\n{hashlib.sha256(token.encode()).hexdigest()}\n{dataset}".encode()).hexdigest()
    return cache_dir() / f"{dataset[:40].replace('/', '_')}-{key[:20]}.jsonl"


class ImportState:
    """An append-only JSONL file: a header line with the tag ids, then one line per acknowledged chunk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[str] = set()
        self._tags: dict[str, int] = {}
        self._out: IO[str] | None = None

    def load(self, tags: dict[str, int]) -> None:
        """Read earlier progress, dropped when a tag's id changed (the dataset or tag was deleted and made again)."""
        self._tags = dict(tags)
        if not self.path.exists():
            return
        done: set[str] = set()
        with self.path.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill mid-write
                if "tags" in row:
                    old = row["tags"]
                    if any(title in tags and tags[title] != tag_id for title, tag_id in old.items()):
                        return
                done.update(row.get("done", ()))
        self.done = done

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.path.open("a", encoding="utf-8")
        self._write({"tags": self._tags})

    def record(self, keys: Sequence[str]) -> None:
        self.done.update(keys)
        self._write({"done": list(keys)})

    def _write(self, row: dict[str, Any]) -> None:
        assert self._out is not None
        self._out.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._out.flush()  # in the kernel's hands: survives the process being killed

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


async def ensure_dataset(client: AsyncClient, dataset: str, source: Source, summary: ImportSummary) -> dict[str, int]:
    """Create the dataset and the missing tags; the ids of every tag of the source."""
    existing = {d.dataset: d for d in await client.list_datasets()}
    if dataset not in existing:
        await client.create_dataset(dataset, kind=source.kind)
        summary.created_dataset = True
    elif existing[dataset].kind not in (None, source.kind):
        raise KashfError(400, "wrong_kind", f"dataset {dataset!r} is a {existing[dataset].kind} dataset; "
                                            f"this source holds {source.kind}s")
    info = await client.dataset_info(dataset, tags=True)
    ids = {t.title: t.id for t in info.tags or []}
    for title in source.tags:
        if title not in ids:
            ids[title] = (await client.create_tag(dataset, title)).tag_id
            summary.created_tags.append(title)
    return {title: ids[title] for title in source.tags}


def chunks_of(units: Sequence[Unit], kind: str, batch: int) -> list[list[Unit]]:
    """Text labels in chunks of ``batch``; image labels grouped by tag (an upload names one tag)."""
    if kind == "text":
        return [list(units[i : i + batch]) for i in range(0, len(units), batch)]
    by_tag: dict[int, list[Unit]] = {}
    for unit in units:
        by_tag.setdefault(unit.tag_id, []).append(unit)
    return [group[i : i + batch] for group in by_tag.values() for i in range(0, len(group), batch)]


async def _send(client: AsyncClient, kind: str, chunk: list[Unit]) -> list[m.Report]:
    if kind == "text":
        reports = [m.TextReport(content=u.example.text or "", tag_id=u.tag_id) for u in chunk]
        return await client.report_text_tags(reports)
    files = [(u.example.name.replace("/", "_"), u.example.content()) for u in chunk]
    return await client.report_image_files(chunk[0].tag_id, files)


async def import_source(
    client: AsyncClient,
    dataset: str,
    source: Source,
    state: ImportState,
    *,
    concurrency: int = 4,
    batch: int | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Report every example's tags. ``on_start(total, already_done)`` once the work is known, then
    ``on_progress(n)`` as chunks are acknowledged or fail."""
    started = time.monotonic()
    retries_before = client.retries
    summary = ImportSummary(dataset, source.kind, len(source.examples), 0, state_file=state.path)
    tag_ids = await ensure_dataset(client, dataset, source, summary)
    units = [Unit(e, t, tag_ids[t]) for e in source.examples for t in e.tags]
    summary.units = len(units)
    state.load(tag_ids)
    pending = [u for u in units if u.key not in state.done]
    summary.already_done = len(units) - len(pending)
    if on_start is not None:
        on_start(len(units), summary.already_done)
    size = batch or (64 if source.kind == "text" else 16)
    queue: asyncio.Queue[list[Unit]] = asyncio.Queue()
    for chunk in chunks_of(pending, source.kind, size):
        queue.put_nowait(chunk)
    fatal: list[KashfError] = []

    async def worker() -> None:
        while not fatal:
            try:
                chunk = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            summary.requests += 1
            try:
                answers = await _send(client, source.kind, chunk)
            except KashfError as exc:
                if exc.status in FATAL_STATUSES:
                    fatal.append(exc)
                summary.failed.extend((u.example.name, f"{exc.status} {exc.error}: {exc.detail}") for u in chunk)
                if on_progress is not None:
                    on_progress(len(chunk))
                continue
            ok = [u for u, a in zip(chunk, answers, strict=True) if a.error is None]
            summary.failed.extend((u.example.name, a.error) for u, a in zip(chunk, answers, strict=True) if a.error)
            if ok:
                state.record([u.key for u in ok])
            summary.uploaded += len(ok)
            if on_progress is not None:
                on_progress(len(chunk))

    state.open()
    try:
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    finally:
        state.close()
    summary.retries = client.retries - retries_before
    summary.seconds = time.monotonic() - started
    if fatal:
        raise fatal[0]
    return summary
