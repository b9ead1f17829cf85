"""Helpers of the client tests: the CLI as a subprocess, and labelled photos and texts written to disk."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

from tests.integration import media
from tests.integration.texts import TRAIN, UNSEEN

# The second gateway of the client tests (conftest.tight_gateway): a tiny rate and list limit.
TIGHT_RATE_PER_MINUTE = 240
TIGHT_BURST = 4
TIGHT_MAX_ITEMS = 8

def kashf(env: dict[str, str], *args: str, stdin: str | None = None,
          timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The installed command line, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "kashf_client", *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=timeout)


def photo_folder(root: Path, views: range) -> Path:
    """One sub-folder of real photos (crops and flips of skimage's) per tag."""
    for name, photo in media.photos().items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in views:
            (root / name / f"{name}_{k}.jpg").write_bytes(media.jpeg(media.variant(photo, k)))
    return root


def texts_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "tag"])
        writer.writerows(rows)
    return path


def train_rows() -> list[tuple[str, str]]:
    return [(text, tag) for tag, texts in TRAIN.items() for text in texts]


def unseen_rows() -> list[tuple[str, str]]:
    return list(UNSEEN)


def summary_value(output: str, row: str) -> str:
    """A value of `kashf import`'s summary table."""
    found = re.search(rf"{re.escape(row)}\s*\S\s*(.+?)\s*\S\s*$", output, re.MULTILINE)
    assert found is not None, f"no {row!r} in:\n{output}"
    return found.group(1)
