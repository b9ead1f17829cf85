"""`kashf` as a user runs it, against the real stack: import a folder of real photos and a CSV of real texts,
train with --wait, evaluate on held-out data, tag; a re-run of import sends nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from devtools.stack import Stack
from kashf_client import Client
from tests.integration.client.helpers import (
    kashf,
    photo_folder,
    summary_value,
    texts_csv,
    train_rows,
    unseen_rows,
)
from tests.integration.texts import DELIVERY, RECOMMEND
from tests.media_video import slideshow

pytestmark = pytest.mark.integration

PHOTO_TAGS = {"cat", "coffee", "rocket", "astronaut"}


def _macro_f1(output: str) -> float:
    found = re.search(r"macro-F1 ([\d.]+) %", output)
    assert found is not None, output
    return float(found.group(1))


def test_photo_folder_import_train_eval_tag(stack: Stack, token: str, cli_env: dict[str, str],
                                            tmp_path: Path) -> None:
    photos = photo_folder(tmp_path / "photos", range(6))
    holdout = photo_folder(tmp_path / "holdout", range(6, 9))

    first = kashf(cli_env, "import", "cli-photos", str(photos))
    assert first.returncode == 0, first.stderr
    assert summary_value(first.stdout, "reported now") == "24"
    assert summary_value(first.stdout, "failed") == "0"
    with Client(stack.url, token) as client:
        info = client.dataset_info("cli-photos")
        assert info.report_count == 24 and info.data_count == 24
        assert {t.title for t in info.tags or []} == PHOTO_TAGS
        assert all(t.reports == 6 for t in info.tags or [])

    again = kashf(cli_env, "import", "cli-photos", str(photos))
    assert again.returncode == 0, again.stderr
    assert summary_value(again.stdout, "reported now") == "0"
    assert summary_value(again.stdout, "already reported (skipped)") == "24"
    assert summary_value(again.stdout, "requests") == "0"
    assert summary_value(again.stdout, "tags created") == "none"

    trained = kashf(cli_env, "train", "cli-photos", "--wait")
    assert trained.returncode == 0, trained.stderr
    assert "trained" in trained.stdout and all(tag in trained.stdout for tag in PHOTO_TAGS)

    evaluated = kashf(cli_env, "eval", "cli-photos", str(holdout))
    assert evaluated.returncode == 0, evaluated.stderr
    assert _macro_f1(evaluated.stdout) >= 75.0, evaluated.stdout
    assert "confusion" in evaluated.stdout

    tagged = kashf(cli_env, "tag", "cli-photos", str(holdout / "cat"), str(holdout / "rocket"), "--format", "jsonl")
    assert tagged.returncode == 0, tagged.stderr
    rows = [json.loads(line) for line in tagged.stdout.splitlines()]
    assert [Path(r["input"]).parent.name for r in rows] == ["cat"] * 3 + ["rocket"] * 3
    right = sum(r["tags"][0]["title"] == Path(r["input"]).parent.name for r in rows)
    assert right >= 5, rows

    # A video: a slideshow of the four photos, one second each; a frame comes back when its tags change.
    video = slideshow(tmp_path).path
    frames = kashf(cli_env, "tag", "cli-photos", str(video), "--every-ms", "250", "--format", "csv")
    assert frames.returncode == 0, frames.stderr
    tops = [line.split(",")[3] for line in frames.stdout.splitlines()[1:]]
    assert [t for t in tops if t in PHOTO_TAGS][:4] == ["astronaut", "coffee", "cat", "rocket"], frames.stdout


def test_views_of_datasets_tags_versions_and_suggestions(cli_env: dict[str, str], tmp_path: Path) -> None:
    photos = photo_folder(tmp_path / "photos", range(4))
    assert kashf(cli_env, "import", "cli-views", str(photos)).returncode == 0
    assert kashf(cli_env, "train", "cli-views", "--wait").returncode == 0
    listed = kashf(cli_env, "datasets")
    assert listed.returncode == 0 and re.search(r"cli-views\s*\S\s*cli-views\s*\S\s*image\s*\S\s*trained",
                                                listed.stdout), listed.stdout
    tags = kashf(cli_env, "tags", "cli-views")
    assert tags.returncode == 0 and all(re.search(rf"{t}\s*\S\s*4\s", tags.stdout) for t in PHOTO_TAGS), tags.stdout
    versions = kashf(cli_env, "versions", "cli-views")
    assert versions.returncode == 0 and re.search(r"1\s*\S\s*live", versions.stdout), versions.stdout
    suggested = kashf(cli_env, "suggest", "cli-views", "--limit", "3")
    assert suggested.returncode == 0 and "label these next" in suggested.stdout
    missing = kashf(cli_env, "tags", "no-such-dataset")
    assert missing.returncode == 1 and "404 dataset_not_found" in missing.stderr
    wrong = kashf({**cli_env, "KASHF_TOKEN": "wrong"}, "datasets")
    assert wrong.returncode == 1 and "401 unauthorized" in wrong.stderr


def test_text_csv_import_train_eval_tag(stack: Stack, token: str, cli_env: dict[str, str], tmp_path: Path) -> None:
    train = texts_csv(tmp_path / "reviews.csv", train_rows())
    holdout = texts_csv(tmp_path / "holdout.csv", unseen_rows())

    first = kashf(cli_env, "import", "cli-reviews", str(train))
    assert first.returncode == 0, first.stderr
    assert summary_value(first.stdout, "reported now") == str(len(train_rows()))
    again = kashf(cli_env, "import", "cli-reviews", str(train))
    assert summary_value(again.stdout, "reported now") == "0"
    assert summary_value(again.stdout, "requests") == "0"
    with Client(stack.url, token) as client:
        assert client.dataset_info("cli-reviews").report_count == len(train_rows())

    trained = kashf(cli_env, "train", "cli-reviews", "--wait")
    assert trained.returncode == 0, trained.stderr
    assert RECOMMEND in trained.stdout

    evaluated = kashf(cli_env, "eval", "cli-reviews", str(holdout), "--plot", str(tmp_path / "cm.png"))
    assert _macro_f1(evaluated.stdout) >= 66.0, evaluated.stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        # No matplotlib in this venv: the figures are printed, then a clear message and a failing status.
        assert evaluated.returncode == 1 and "needs matplotlib" in evaluated.stderr
        assert not (tmp_path / "cm.png").exists()
    else:
        assert evaluated.returncode == 0 and (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"

    lines = "Shipping was quick, it came the next day.\nI recommend it, great value for money.\n"
    tagged = kashf(cli_env, "tag", "cli-reviews", "-", "--format", "csv", stdin=lines)
    assert tagged.returncode == 0, tagged.stderr
    rows = tagged.stdout.splitlines()
    assert rows[0].startswith("input,frame,time,top_tag")
    assert [r.split(",")[3] for r in rows[1:]] == [DELIVERY, RECOMMEND]


def test_jsonl_rows_with_several_tags(stack: Stack, token: str, cli_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "multi.jsonl"
    rows = [{"text": "Fast delivery and I recommend the seller.", "tags": ["fast", "recommend"]},
            {"text": "Arrived in a day.", "tag": "fast"},
            {"text": "Buy it, worth the money.", "tag": "recommend|value"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    done = kashf(cli_env, "import", "cli-multi", str(path))
    assert done.returncode == 0, done.stderr
    with Client(stack.url, token) as client:
        info = client.dataset_info("cli-multi")
    assert info.data_count == 3 and info.report_count == 5
    assert {t.title: t.reports for t in info.tags or []} == {"fast": 2, "recommend": 2, "value": 1}
