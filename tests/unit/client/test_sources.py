"""What `kashf import` and `kashf eval` read: image folders, CSV and JSONL of texts (several tags per row), zips."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from kashf_client.sources import SourceError, read_source


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_repeated_tag_columns_and_pipes(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.csv", "text,tag,tag\nخیلی عالی بود,good,\nlate and bad,late|bad,bad\n,good,\nno tag,,\n"
                                      "extra cells,a,b,c\n")
    source = read_source(path, tmp_path)
    assert source.kind == "text"
    assert [(e.text, e.tags) for e in source.examples] == [
        ("خیلی عالی بود", ("good",)), ("late and bad", ("late", "bad")), ("extra cells", ("a", "b", "c"))]
    assert source.tags == ["good", "late", "bad", "a", "b", "c"]
    assert [s.split(": ")[1] for s in source.skipped] == ["empty text", "no tag"]
    assert source.examples[0].key != source.examples[1].key


def test_csv_needs_a_header_naming_text_and_tag(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="text column"):
        read_source(_write(tmp_path / "r.csv", "hello,good\n"), tmp_path)


def test_jsonl_tags_as_list_string_or_pipes(tmp_path: Path) -> None:
    rows = [{"text": "a", "tags": ["x", "y"]}, {"content": "b", "tag": "y|z"}, {"text": "c", "label": "x"}]
    path = _write(tmp_path / "r.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert [e.tags for e in read_source(path, tmp_path).examples] == [("x", "y"), ("y", "z"), ("x",)]


def test_image_folder_one_sub_folder_per_tag(tmp_path: Path) -> None:
    for tag in ("cat", "dog"):
        (tmp_path / "data" / tag).mkdir(parents=True)
        (tmp_path / "data" / tag / f"{tag}.jpg").write_bytes(tag.encode())
    _write(tmp_path / "data" / "dog" / "notes.txt", "not an image")
    source = read_source(tmp_path / "data", tmp_path)
    assert source.kind == "image"
    assert [(e.name, e.tags) for e in source.examples] == [("cat/cat.jpg", ("cat",)), ("dog/dog.jpg", ("dog",))]
    assert source.skipped == ["dog/notes.txt: not an image file"]


def test_zips_of_a_folder_or_a_csv(tmp_path: Path) -> None:
    images = tmp_path / "images.zip"
    with zipfile.ZipFile(images, "w") as archive:
        archive.writestr("photos/cat/1.jpg", b"1")
        archive.writestr("photos/cat/2.jpg", b"2")
        archive.writestr("photos/dog/3.png", b"3")
    unpack = tmp_path / "unpack"
    unpack.mkdir()
    source = read_source(images, unpack)
    assert source.kind == "image" and [e.tags[0] for e in source.examples] == ["cat", "cat", "dog"]
    texts = tmp_path / "texts.zip"
    with zipfile.ZipFile(texts, "w") as archive:
        archive.writestr("data/reviews.csv", "text,tags\nhello,a|b\n")
    assert read_source(texts, tmp_path).examples[0].tags == ("a", "b")


def test_a_missing_or_unknown_path_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        read_source(tmp_path / "missing.csv", tmp_path)
    with pytest.raises(SourceError, match="expected a folder"):
        read_source(_write(tmp_path / "notes.txt", "x"), tmp_path)
