"""Labelled data on disk, read into examples: a folder with one sub-folder of images per tag, a CSV or JSONL of
texts (``text`` and ``tag`` columns; several tags per row as repeated ``tag`` columns, a ``tags`` column or
``a|b``), or a zip of either."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpeg", ".mpg"})
CSV_SUFFIXES = frozenset({".csv", ".tsv"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
TEXT_COLUMNS = ("text", "content")
TAG_COLUMNS = ("tag", "tags", "label", "labels")
TAG_SEPARATOR = "|"

Kind = Literal["text", "image"]


class SourceError(ValueError):
    """The path cannot be read as labelled data (the message says why and what was expected)."""


@dataclass(frozen=True)
class Example:
    """One text or image file with its tags; ``key`` is the SHA-256 of its content (resumable imports)."""

    name: str
    key: str
    tags: tuple[str, ...]
    text: str | None = None
    path: Path | None = None

    def content(self) -> bytes:
        assert self.path is not None
        return self.path.read_bytes()


@dataclass
class Source:
    kind: Kind
    examples: list[Example]
    skipped: list[str] = field(default_factory=list)  # rows or files not used, with the reason

    @property
    def tags(self) -> list[str]:
        """Every tag, in order of first appearance."""
        return list(dict.fromkeys(t for e in self.examples for t in e.tags))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split_tags(values: Iterable[str]) -> tuple[str, ...]:
    """``["a|b", " c "]`` -> ``("a", "b", "c")``; empty values dropped, order kept, no repeats."""
    out = (part.strip() for value in values for part in value.split(TAG_SEPARATOR))
    return tuple(dict.fromkeys(p for p in out if p))


def read_source(path: Path, unpack_dir: Path) -> Source:
    """Read ``path``; a zip is unpacked into ``unpack_dir`` first."""
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if path.is_file() and zipfile.is_zipfile(path):
        return _read_zip(path, unpack_dir)
    if path.is_dir():
        return read_image_folder(path)
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return read_csv(path.read_text(encoding="utf-8-sig"), path.name, delimiter="\t" if suffix == ".tsv" else ",")
    if suffix in JSONL_SUFFIXES or suffix == ".json":
        return read_jsonl(path.read_text(encoding="utf-8-sig").splitlines(), path.name)
    raise SourceError(f"{path}: expected a folder of images (one sub-folder per tag), a .csv, a .jsonl or a .zip")


def read_image_folder(root: Path) -> Source:
    # A folder holding only one folder (as a zip often does) is looked through.
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
        dirs = [p for p in entries if p.is_dir()]
        if len(dirs) == 1 and not any(p.is_file() for p in entries) and any(q.is_dir() for q in dirs[0].iterdir()):
            root = dirs[0]
            continue
        break
    if not dirs:
        texts = [p for p in entries if p.suffix.lower() in CSV_SUFFIXES | JSONL_SUFFIXES]
        if len(texts) == 1:
            return read_source(texts[0], root)
        raise SourceError(f"{root}: no sub-folders: put each tag's images in a folder named after the tag")
    examples: list[Example] = []
    skipped: list[str] = []
    for tag_dir in sorted(dirs):
        for file in sorted(p for p in tag_dir.rglob("*") if p.is_file()):
            if file.name.startswith("."):
                continue
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(f"{file.relative_to(root)}: not an image file")
                continue
            examples.append(Example(str(file.relative_to(root)), sha256(file.read_bytes()), (tag_dir.name,),
                                    path=file))
    if not examples:
        raise SourceError(f"{root}: no image files in its sub-folders ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return Source("image", examples, skipped)


def _text_example(text: str, tags: tuple[str, ...], where: str, skipped: list[str]) -> Example | None:
    if not text.strip():
        skipped.append(f"{where}: empty text")
        return None
    if not tags:
        skipped.append(f"{where}: no tag")
        return None
    return Example(where, sha256(text.encode()), tags, text=text)


def read_csv(data: str, name: str, delimiter: str = ",") -> Source:
    rows = csv.reader(io.StringIO(data, newline=""), delimiter=delimiter)
    header = [h.strip().lower() for h in next(rows, [])]
    text_col = next((header.index(c) for c in TEXT_COLUMNS if c in header), None)
    tag_cols = [i for i, h in enumerate(header) if h in TAG_COLUMNS]
    if text_col is None or not tag_cols:
        raise SourceError(f"{name}: the first row must name a text column (text or content) and one or more tag "
                          f"columns (tag, tags); it has {', '.join(header) or 'nothing'}")
    examples: list[Example] = []
    skipped: list[str] = []
    for line, row in enumerate(rows, start=2):
        if not row:
            continue
        text = row[text_col] if text_col < len(row) else ""
        tags = split_tags(row[i] for i in tag_cols if i < len(row))
        # A row with more cells than the header: the extra cells are further tags (text,tag,tag ...).
        tags = split_tags([*tags, *row[len(header):]]) if len(row) > len(header) else tags
        example = _text_example(text, tags, f"{name}:{line}", skipped)
        if example is not None:
            examples.append(example)
    if not examples:
        raise SourceError(f"{name}: no labelled rows")
    return Source("text", examples, skipped)


def read_jsonl(lines: Iterable[str], name: str) -> Source:
    examples: list[Example] = []
    skipped: list[str] = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{name}:{line_no}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise SourceError(f"{where}: not JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise SourceError(f"{where}: expected an object with text and tag (or tags)")
        text = next((row[c] for c in TEXT_COLUMNS if isinstance(row.get(c), str)), "")
        raw: list[str] = []
        for column in TAG_COLUMNS:
            value = row.get(column)
            if isinstance(value, str):
                raw.append(value)
            elif isinstance(value, list):
                raw.extend(str(v) for v in value if v is not None)
        example = _text_example(text, split_tags(raw), where, skipped)
        if example is not None:
            examples.append(example)
    if not examples:
        raise SourceError(f"{name}: no labelled lines")
    return Source("text", examples, skipped)


def _read_zip(path: Path, unpack_dir: Path) -> Source:
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/") and "__MACOSX" not in n]
        texts = [n for n in names if Path(n).suffix.lower() in CSV_SUFFIXES | JSONL_SUFFIXES]
        if len(texts) == 1 and not any(Path(n).suffix.lower() in IMAGE_SUFFIXES for n in names):
            data = archive.read(texts[0]).decode("utf-8-sig")
            label = f"{path.name}/{texts[0]}"
            if Path(texts[0]).suffix.lower() in CSV_SUFFIXES:
                return read_csv(data, label, "\t" if texts[0].lower().endswith(".tsv") else ",")
            return read_jsonl(data.splitlines(), label)
        # extractall keeps members inside unpack_dir (absolute and ".." parts are dropped).
        archive.extractall(unpack_dir)
    return read_image_folder(unpack_dir)


def iter_text_lines(data: str) -> Iterator[str]:
    """Non-empty lines of a text file, one text each."""
    return (line for line in data.splitlines() if line.strip())
