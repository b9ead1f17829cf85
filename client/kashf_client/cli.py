"""The ``kashf`` command line: import, train, tag, eval and a look at datasets, tags, versions, suggestions."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from kashf_client import models as m
from kashf_client._core import DEFAULT_URL
from kashf_client.client import AsyncClient
from kashf_client.errors import KashfError
from kashf_client.importer import ImportState, ImportSummary, import_source, state_path
from kashf_client.metrics import Evaluation, evaluate, plot_confusion
from kashf_client.sources import (
    CSV_SUFFIXES,
    IMAGE_SUFFIXES,
    JSONL_SUFFIXES,
    TEXT_COLUMNS,
    VIDEO_SUFFIXES,
    Source,
    SourceError,
    iter_text_lines,
    read_source,
)

T = TypeVar("T")
X = TypeVar("X")

app = typer.Typer(
    name="kashf", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Kashf from the command line: import labelled data, train, tag and evaluate.",
)
out = Console(soft_wrap=True)
err = Console(stderr=True)


@dataclass(frozen=True)
class Settings:
    url: str
    token: str | None
    timeout: float

    def client(self, concurrency: int = 8) -> AsyncClient:
        return AsyncClient(self.url, self.token, timeout=self.timeout, max_connections=max(concurrency, 8),
                           on_retry=_note_retry)


def _note_retry(error: KashfError, delay: float) -> None:
    err.print(f"[dim]retrying in {delay:.1f} s after {error.status or ''} {error.error}[/dim]", highlight=False)


@app.callback()
def main_options(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="KASHF_URL", help="The gateway's address.")] = DEFAULT_URL,
    token: Annotated[str | None, typer.Option(envvar="KASHF_TOKEN", help="API token (KASHF_TOKEN).",
                                              show_default=False)] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for one answer.")] = 300.0,
) -> None:
    ctx.obj = Settings(url, token, timeout)


def _run(ctx: typer.Context, work: Callable[[AsyncClient], Awaitable[T]], concurrency: int = 8) -> T:
    """Run one command's work with a client; errors become one line on stderr and exit status 1 (2 for data)."""
    settings: Settings = ctx.obj

    async def go() -> T:
        async with settings.client(concurrency) as client:
            return await work(client)

    try:
        return asyncio.run(go())
    except KashfError as exc:
        where = f"{exc.status} " if exc.status else ""
        err.print(f"[red]error:[/red] {where}{exc.error}: {exc.detail}", highlight=False)
        raise typer.Exit(1) from None
    except SourceError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err.print("interrupted (an import keeps its progress: run it again to go on)", highlight=False)
        raise typer.Exit(130) from None


async def parallel(items: Sequence[X], size: int, concurrency: int,
                   call: Callable[[Sequence[X]], Awaitable[list[T]]],
                   done: Callable[[int], None] | None = None) -> list[T]:
    """``call`` over chunks of ``size``, ``concurrency`` at a time; answers in the items' order."""
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    gate = asyncio.Semaphore(concurrency)

    async def one(chunk: Sequence[X]) -> list[T]:
        async with gate:
            answer = await call(chunk)
        if done is not None:
            done(len(chunk))
        return answer

    results = await asyncio.gather(*(one(c) for c in chunks))
    return [a for answer in results for a in answer]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=err, transient=False)


# import


@app.command("import")
def import_(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="Dataset name (created when missing).")],
    path: Annotated[Path, typer.Argument(help="A folder with a sub-folder of images per tag, a CSV or JSONL of "
                                              "texts (text,tag columns; a|b or repeated tag columns for several "
                                              "tags), or a zip of either.")],
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Requests in flight.")] = 4,
    batch: Annotated[int | None, typer.Option(min=1, help="Labels per request (default 64 texts, 16 images).")]
    = None,
    state: Annotated[Path | None, typer.Option(help="Progress file (default under ~/.cache/kashf/imports).")]
    = None,
    fresh: Annotated[bool, typer.Option(help="Ignore earlier progress and send everything again.")] = False,
) -> None:
    """Create the dataset and its tags and report every labelled example; a re-run sends only what is left."""
    settings: Settings = ctx.obj
    with tempfile.TemporaryDirectory(prefix="kashf-import-") as unpack:
        source = _read(path, Path(unpack))
        state_file = state or state_path(settings.url, settings.token or "", dataset)
        if fresh:
            state_file.unlink(missing_ok=True)
        err.print(f"{path}: {len(source.examples)} {source.kind}s, {len(source.tags)} tags", highlight=False)
        with _progress() as bar:
            task = bar.add_task(f"importing into {dataset}", total=None)

            def start(total: int, done: int) -> None:
                bar.update(task, total=total, completed=done)

            summary = _run(ctx, lambda c: import_source(
                c, dataset, source, ImportState(state_file), concurrency=concurrency, batch=batch,
                on_start=start, on_progress=lambda n: bar.advance(task, n)), concurrency)
    _print_summary(summary, source)
    if summary.failed:
        raise typer.Exit(1)


def _read(path: Path, unpack: Path) -> Source:
    try:
        return read_source(path, unpack)
    except SourceError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _print_summary(s: ImportSummary, source: Source) -> None:
    table = Table(title=f"import into {s.dataset}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rate = s.uploaded / s.seconds if s.seconds else 0.0
    rows = [
        ("examples", f"{s.examples} {s.kind}s"),
        ("labels", str(s.units)),
        ("already reported (skipped)", str(s.already_done)),
        ("reported now", str(s.uploaded)),
        ("failed", str(len(s.failed))),
        ("dataset", "created" if s.created_dataset else "existed"),
        ("tags created", ", ".join(s.created_tags) or "none"),
        ("requests", str(s.requests)),
        ("retries", str(s.retries)),
        ("time", f"{s.seconds:.1f} s ({rate:.1f} labels/s)"),
    ]
    if source.skipped:
        rows.append(("rows or files skipped", str(len(source.skipped))))
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)
    for name, why in s.failed[:10]:
        err.print(f"[red]failed:[/red] {name}: {why}", highlight=False)
    for line in source.skipped[:10]:
        err.print(f"[yellow]skipped:[/yellow] {line}", highlight=False)
    out.print(f"[dim]progress kept in {s.state_file}[/dim]", highlight=False)


# train


def _tags_table(info: m.DatasetInfo, title: str) -> Table:
    table = Table(title=title)
    for name in ("id", "tag", "reports", "predictions", "precision %", "recall %", "F1 %", "threshold"):
        table.add_column(name, justify="left" if name == "tag" else "right")
    for tag in info.tags or []:
        ev = tag.evaluation or m.Evaluation()
        threshold = "-" if tag.threshold is None else f"{tag.threshold:.2f}"
        table.add_row(str(tag.id), tag.title, str(tag.reports), str(tag.predictions), _pct(ev.precision),
                      _pct(ev.recall), _pct(ev.f1), threshold)
    return table


def _info_caption(info: m.DatasetInfo) -> str:
    ev = info.evaluation or m.Evaluation()
    version = "" if info.version is None else f", version {info.version}"
    return (f"{info.state}{version}: {info.report_count} reports on {info.data_count} items; micro precision "
            f"{_pct(ev.precision)} %, recall {_pct(ev.recall)} %")


@app.command()
def train(
    ctx: typer.Context,
    dataset: str,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the fit, then show its figures.")]
    = False,
    force: Annotated[bool, typer.Option(help="Promote the fit even when worse than the live head.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 1800.0,
) -> None:
    """Queue a refit of the dataset's head; --wait shows per-tag precision, recall and F1 when it is done."""

    async def work(client: AsyncClient) -> m.DatasetInfo | None:
        queued = await client.train_dataset(dataset, force=force)
        if not wait:
            out.print(f"{queued.dataset}: {queued.state}")
            return None
        started = time.monotonic()
        with err.status(f"training {dataset}: {queued.state}") as status:
            while True:
                info = await client.dataset_info(dataset, tags=True)
                if info.state in ("trained", "failed"):
                    return info
                if time.monotonic() - started > timeout:
                    raise KashfError(0, "timeout", f"{dataset} still {info.state} after {timeout:g} s")
                status.update(f"training {dataset}: {info.state} ({time.monotonic() - started:.0f} s)")
                await asyncio.sleep(0.5)

    info = _run(ctx, work)
    if info is None:
        return
    out.print(_tags_table(info, f"{dataset}: {info.title}"))
    out.print(_info_caption(info), highlight=False)
    if info.state == "failed":
        raise typer.Exit(1)


# tag


class Format(StrEnum):
    table = "table"
    jsonl = "jsonl"
    csv = "csv"


@dataclass(frozen=True)
class Inputs:
    texts: list[tuple[str, str]]  # (where, text)
    images: list[Path]
    videos: list[Path]


def _texts_of(path: Path) -> list[tuple[str, str]]:
    suffix = path.suffix.lower()
    data = path.read_text(encoding="utf-8-sig")
    if suffix in CSV_SUFFIXES:
        rows = list(csv.reader(io.StringIO(data, newline=""), delimiter="\t" if suffix == ".tsv" else ","))
        header = [h.strip().lower() for h in rows[0]] if rows else []
        column = next((header.index(c) for c in TEXT_COLUMNS if c in header), None)
        body = rows[1:] if column is not None else rows  # no text column named: one text per row, first cell
        col = column or 0
        return [(f"{path.name}:{i}", r[col]) for i, r in enumerate(body, start=2 if column is not None else 1)
                if col < len(r) and r[col].strip()]
    if suffix in JSONL_SUFFIXES:
        texts = []
        for i, line in enumerate(data.splitlines(), start=1):
            if line.strip():
                row = json.loads(line)
                text = row if isinstance(row, str) else next((row[c] for c in TEXT_COLUMNS if c in row), None)
                if isinstance(text, str) and text.strip():
                    texts.append((f"{path.name}:{i}", text))
        return texts
    return [(f"{path.name}:{i}", line) for i, line in enumerate(iter_text_lines(data), start=1)]


def collect_inputs(args: Sequence[str]) -> Inputs:
    texts: list[tuple[str, str]] = []
    images: list[Path] = []
    videos: list[Path] = []
    for arg in args:
        if arg == "-":
            texts.extend((f"stdin:{i}", line) for i, line in enumerate(iter_text_lines(sys.stdin.read()), start=1))
            continue
        path = Path(arg)
        if not path.exists():
            raise SourceError(f"{arg}: no such file or folder")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            suffix = file.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                images.append(file)
            elif suffix in VIDEO_SUFFIXES:
                videos.append(file)
            elif not path.is_dir():
                texts.extend(_texts_of(file))
    return Inputs(texts, images, videos)


def _tags_text(tags: Sequence[m.TagScore]) -> str:
    return ", ".join(f"{t.title} {t.probability:.2f}" for t in tags)


@app.command()
def tag(
    ctx: typer.Context,
    dataset: str,
    inputs: Annotated[list[str], typer.Argument(help="Files or folders: images, videos, text files (one text a "
                                                     "line), CSV (text column) or JSONL; - reads lines from stdin.")],
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    top_k: Annotated[int | None, typer.Option(help="At most this many tags per item.")] = None,
    min_probability: Annotated[float | None, typer.Option(help="Leave out tags below this probability.")] = None,
    every_ms: Annotated[int, typer.Option(help="Videos: one frame every this many ms.")] = 1000,
    min_frame_diff: Annotated[float, typer.Option(help="Videos: skip frames closer than this (0-255).")] = 0.0,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Requests in flight.")] = 4,
) -> None:
    """Tag texts, images and videos with the dataset's tags."""
    try:
        found = collect_inputs(inputs)
    except SourceError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if not (found.texts or found.images or found.videos):
        err.print("[red]error:[/red] nothing to tag in the inputs given", highlight=False)
        raise typer.Exit(2)

    async def work(client: AsyncClient) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = []
        if found.texts:
            answers = await parallel([t for _, t in found.texts], 64, concurrency,
                                     lambda c: client.tag_texts(dataset, c, top_k=top_k,
                                                                min_probability=min_probability))
            rows.extend(zip([w for w, _ in found.texts], answers, strict=True))
        if found.images:
            answers_i = await parallel(found.images, 16, concurrency,
                                       lambda c: client.tag_image_files(dataset, c, top_k=top_k,
                                                                        min_probability=min_probability))
            rows.extend(zip([str(p) for p in found.images], answers_i, strict=True))
        if found.videos:
            answers_v = await parallel(found.videos, 1, concurrency,
                                       lambda c: client.tag_video_files(dataset, c, every_ms=every_ms,
                                                                        min_frame_diff=min_frame_diff, top_k=top_k,
                                                                        min_probability=min_probability))
            rows.extend(zip([str(p) for p in found.videos], answers_v, strict=True))
        return rows

    _print_tags(_run(ctx, work, concurrency), format)


def _flat(rows: Sequence[tuple[str, Any]]) -> list[tuple[str, str, str, Sequence[m.TagScore], str]]:
    """(input, frame, time, tags, error): one row per text or image, one per returned frame of a video."""
    flat: list[tuple[str, str, str, Sequence[m.TagScore], str]] = []
    for where, answer in rows:
        if isinstance(answer, m.VideoTags):
            if answer.error or not answer.frames:
                flat.append((where, "", "", [], answer.error or ""))
            flat.extend((where, str(f.frame), f.time, f.tags, "") for f in answer.frames)
        else:
            flat.append((where, "", "", answer.tags, answer.error or ""))
    return flat


def _print_tags(rows: Sequence[tuple[str, Any]], format: Format) -> None:
    if format is Format.jsonl:
        for where, answer in rows:
            sys.stdout.write(json.dumps({"input": where, **answer.model_dump(exclude_none=True)},
                                        ensure_ascii=False) + "\n")
        return
    flat = _flat(rows)
    if format is Format.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["input", "frame", "time", "top_tag", "top_probability", "tags", "error"])
        for where, frame, when, tags, error in flat:
            top = tags[0] if tags else None
            writer.writerow([where, frame, when, top.title if top else "", top.probability if top else "",
                             "|".join(f"{t.title}:{t.probability}" for t in tags), error])
        return
    has_frames = any(frame for _, frame, _, _, _ in flat)
    table = Table()
    table.add_column("input", overflow="fold")
    if has_frames:
        table.add_column("frame", justify="right")
        table.add_column("time")
    table.add_column("tags")
    for where, frame, when, tags, error in flat:
        text = f"[red]{error}[/red]" if error else _tags_text(tags)
        table.add_row(where, *((frame, when) if has_frames else ()), text)
    out.print(table)


# eval


@app.command("eval")
def eval_(
    ctx: typer.Context,
    dataset: str,
    path: Annotated[Path, typer.Argument(help="Labelled hold-out data, in any format `kashf import` reads.")],
    plot: Annotated[Path | None, typer.Option(help="Write the confusion matrix as a PNG (needs matplotlib).")]
    = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Requests in flight.")] = 4,
) -> None:
    """Tag a labelled hold-out set; per-tag precision, recall, F1, macro-F1 and a confusion matrix."""
    with tempfile.TemporaryDirectory(prefix="kashf-eval-") as unpack:
        source = _read(path, Path(unpack))

        async def work(client: AsyncClient) -> list[Any]:
            with _progress() as bar:
                task = bar.add_task(f"tagging with {dataset}", total=len(source.examples))

                def step(n: int) -> None:
                    bar.advance(task, n)

                if source.kind == "text":
                    return await parallel([e.text or "" for e in source.examples], 64, concurrency,
                                          lambda c: client.tag_texts(dataset, c), step)
                return await parallel([e.path for e in source.examples if e.path], 16, concurrency,
                                      lambda c: client.tag_image_files(dataset, c), step)

        answers = _run(ctx, work, concurrency)
    predicted = [[t.title for t in a.tags if t.id != 0] for a in answers]
    errors = sum(1 for a in answers if a.error)
    result = evaluate([e.tags for e in source.examples], predicted)
    _print_eval(result, dataset, errors)
    if plot is not None:
        try:
            plot_confusion(result, str(plot), f"{dataset}: {path.name}")
        except ImportError:
            err.print("[red]--plot needs matplotlib, which is not installed[/red] (pip install "
                      "'kashf-client\\[plot]'); no plot written", highlight=False)
            raise typer.Exit(1) from None
        out.print(f"confusion matrix written to {plot}", highlight=False)


def _print_eval(result: Evaluation, dataset: str, errors: int) -> None:
    table = Table(title=f"{dataset} on {result.examples} held-out examples")
    for name in ("tag", "support", "precision %", "recall %", "F1 %"):
        table.add_column(name, justify="left" if name == "tag" else "right")
    for s in result.tags:
        table.add_row(s.tag, str(s.support), _pct(100 * s.precision), _pct(100 * s.recall), _pct(100 * s.f1))
    out.print(table)
    out.print(f"macro-F1 {100 * result.macro_f1:.1f} %, micro-F1 {100 * result.micro_f1:.1f} %, exact tag set "
              f"{result.exact}/{result.examples}" + (f", {errors} not tagged (errors)" if errors else ""),
              highlight=False)
    matrix = Table(title="confusion: true tag (rows) x top predicted tag (columns)")
    matrix.add_column("true \\ predicted")
    for column in result.columns:
        matrix.add_column(column, justify="right")
    for row, counts in zip(result.rows, result.confusion, strict=True):
        matrix.add_row(row, *(str(c) for c in counts))
    out.print(matrix)


# looking around


@app.command()
def datasets(ctx: typer.Context) -> None:
    """This account's datasets."""
    rows = _run(ctx, lambda c: c.list_datasets())
    table = Table()
    for name in ("dataset", "title", "kind", "state"):
        table.add_column(name)
    for d in rows:
        table.add_row(d.dataset, d.title, d.kind or "-", d.state or "-")
    out.print(table)


@app.command()
def tags(ctx: typer.Context, dataset: str) -> None:
    """The dataset's tags with their reports, figures and thresholds."""
    info = _run(ctx, lambda c: c.dataset_info(dataset, tags=True))
    out.print(_tags_table(info, f"{dataset}: {info.title}"))
    out.print(_info_caption(info), highlight=False)


@app.command()
def versions(ctx: typer.Context, dataset: str) -> None:
    """The dataset's head versions, newest first."""
    rows = _run(ctx, lambda c: c.list_versions(dataset))
    table = Table(title=dataset)
    for name in ("version", "state", "created", "reports", "precision %", "recall %", "F1 %"):
        table.add_column(name, justify="left" if name in ("state", "created") else "right")
    for v in rows:
        ev = v.evaluation or m.Evaluation()
        created = v.created.isoformat(timespec="seconds") if v.created else "-"
        table.add_row(str(v.version), v.state, created, str(v.report_count if v.report_count is not None else "-"),
                      _pct(ev.precision), _pct(ev.recall), _pct(ev.f1))
    out.print(table)


@app.command()
def suggest(
    ctx: typer.Context,
    dataset: str,
    tag_id: Annotated[int | None, typer.Option("--tag", help="Only this tag id.")] = None,
    limit: Annotated[int | None, typer.Option(help="How many suggestions (server default 20).")] = None,
) -> None:
    """What to label next: uncertain items and reports that look mistaken."""

    async def work(client: AsyncClient) -> tuple[list[m.Suggestion], dict[int, str]]:
        found = await client.suggest_labels(dataset, tag_id=tag_id, limit=limit)
        info = await client.dataset_info(dataset, tags=True)
        return found, {t.id: t.title for t in info.tags or []}

    found, titles = _run(ctx, work)
    table = Table(title=f"{dataset}: label these next")
    for name in ("item", "reason", "tag", "probability", "content"):
        table.add_column(name, justify="right" if name in ("item", "probability") else "left", overflow="fold")
    for s in found:
        tag_name = titles.get(s.tag_id, str(s.tag_id)) if s.tag_id is not None else "-"
        prob = "-" if s.probability is None else f"{s.probability:.2f}"
        table.add_row(str(s.item_id), s.reason, tag_name, prob, s.content or s.image or "")
    out.print(table)


def main() -> None:
    app()
