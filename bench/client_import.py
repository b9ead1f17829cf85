"""`kashf import` against a plain single-request loop: 1,000 texts and 200 images reported to a running stack.

The import is the command line as a user runs it (`python -m kashf_client import`, chunked requests in
parallel, a fresh progress file); the baseline sends the same labels one request per text or image, in
sequence, waiting out any 429 by its Retry-After. Each side writes into its own new dataset, so neither finds
the other's items stored. Needs a running stack and a token:

    make up                                  # in another terminal; prints the token
    KASHF_URL=http://127.0.0.1:8000 KASHF_TOKEN=... python -m bench.client_import [--texts 1000 --images 200]

The stack's account rate (KASHF_RATE_PER_MINUTE, default 600 a minute, bursts of 120) slows the plain loop more
than the import (one request per label against one per chunk); start the stack with KASHF_RATE_PER_MINUTE=0 to
compare the work alone. Not part of `make test` or `make bench` (it needs a stack that is already up).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from tests.integration import media
from tests.integration.texts import TRAIN

PHOTOS = ("cat", "coffee", "rocket", "astronaut")


def make_texts(n: int) -> list[tuple[str, str]]:
    """``n`` distinct labelled reviews: the test reviews with an order number and a varied ending."""
    base = [(text, tag) for tag, texts in TRAIN.items() for text in texts]
    endings = ("", " Thanks.", " ممنون.", " Five stars.", " دوباره هم می‌خرم.", " Not again.")
    return [(f"{base[i % len(base)][0]} (#{i}){endings[i % len(endings)]}", base[i % len(base)][1]) for i in range(n)]


def make_photos(root: Path, n: int) -> list[tuple[Path, str]]:
    """``n`` real photos, crops and flips of skimage's, one sub-folder per tag."""
    photos = media.photos()
    out = []
    for i in range(n):
        tag = PHOTOS[i % len(PHOTOS)]
        (root / tag).mkdir(parents=True, exist_ok=True)
        path = root / tag / f"{tag}_{i}.jpg"
        path.write_bytes(media.jpeg(media.variant(photos[tag], i, size=320)))
        out.append((path, tag))
    return out


def kashf_import(url: str, token: str, dataset: str, path: Path, cache: Path) -> float:
    env = {**os.environ, "KASHF_URL": url, "KASHF_TOKEN": token, "KASHF_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "kashf_client", "import", dataset, str(path)], env=env,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"kashf import failed:\n{done.stdout}\n{done.stderr}")
    return elapsed


class Loop:
    """The baseline: one request per label, in sequence, as a hand-written script would."""

    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=120)
        self.waits = 0

    def post(self, path: str, **kwargs: object) -> httpx.Response:
        while True:
            response = self.http.post(path, **kwargs)  # type: ignore[arg-type]
            if response.status_code != 429:
                response.raise_for_status()
                return response
            self.waits += 1
            time.sleep(float(response.headers.get("retry-after", "1")))

    def tags(self, dataset: str, kind: str, titles: list[str]) -> dict[str, int]:
        self.post("/api/create_dataset/", json={"dataset": dataset, "kind": kind})
        return {t: self.post("/api/create_tag/", json={"dataset": dataset, "title": t}).json()["tag_id"]
                for t in titles}

    def texts(self, dataset: str, rows: list[tuple[str, str]]) -> float:
        started = time.perf_counter()
        ids = self.tags(dataset, "text", sorted({tag for _, tag in rows}))
        for text, tag in rows:
            self.post("/api/report_text_tags/", json=[{"content": text, "tag_id": ids[tag], "positive": True}])
        return time.perf_counter() - started

    def images(self, dataset: str, files: list[tuple[Path, str]]) -> float:
        started = time.perf_counter()
        ids = self.tags(dataset, "image", sorted({tag for _, tag in files}))
        for path, tag in files:
            self.post("/api/report_image_tags/", data={"tag_id": str(ids[tag])},
                      files=[("image_file", (path.name, path.read_bytes(), "image/jpeg"))])
        return time.perf_counter() - started


def report_count(loop: Loop, dataset: str) -> int:
    count: int = loop.post("/api/dataset_info/", json={"dataset": dataset, "tags": False}).json()["report_count"]
    return count


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.client_import", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("KASHF_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", default=os.environ.get("KASHF_TOKEN"))
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    if not args.token:
        raise SystemExit("set KASHF_TOKEN (make up prints one) or pass --token")
    run = uuid.uuid4().hex[:6]
    loop = Loop(args.url, args.token)
    with tempfile.TemporaryDirectory(prefix="kashf-bench-") as tmp:
        root = Path(tmp)
        rows = make_texts(args.texts)
        with (root / "texts.csv").open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("text", "tag"), *rows])
        files = make_photos(root / "photos", args.images)
        results = []
        for what, n, imported, looped in (
            ("texts", len(rows), lambda d: kashf_import(args.url, args.token, d, root / "texts.csv", root / "c1"),
             lambda d: loop.texts(d, rows)),
            ("images", len(files), lambda d: kashf_import(args.url, args.token, d, root / "photos", root / "c2"),
             lambda d: loop.images(d, files)),
        ):
            waits_before = loop.waits
            t_import = imported(f"bench-import-{what}-{run}")
            t_loop = looped(f"bench-loop-{what}-{run}")
            for side in ("import", "loop"):
                got = report_count(loop, f"bench-{side}-{what}-{run}")
                assert got == n, f"{side} reported {got} of {n} {what}"
            results.append((what, n, t_import, t_loop, loop.waits - waits_before))
    print(f"{'work':<14}{'kashf import':>14}{'plain loop':>14}{'speed-up':>10}  loop 429 waits")
    for what, n, t_import, t_loop, waits in results:
        print(f"{n:>5} {what:<8}{t_import:>12.1f} s{t_loop:>12.1f} s{t_loop / t_import:>9.1f}x  {waits}")


if __name__ == "__main__":
    main()
