"""The client under the server's limits, on a second gateway of the stack with a tiny rate and list limit:
429s are waited out (Retry-After) and the import completes; lists are split under KASHF_MAX_ITEMS learned from
a 413; an import killed half-way finishes on a re-run without sending again what was acknowledged."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.stack import Stack
from kashf_client import Client, KashfError, Limits, TextReport
from tests.integration.client.helpers import TIGHT_BURST, TIGHT_MAX_ITEMS, kashf, summary_value, texts_csv

pytestmark = pytest.mark.integration


def _reviews(n: int, prefix: str) -> list[tuple[str, str]]:
    tags = ("good", "bad", "late")
    return [(f"{prefix} review number {i}: the {tags[i % 3]} kind", tags[i % 3]) for i in range(n)]


def test_429_waits_retry_after_and_the_import_completes(stack: Stack, tight_gateway: Stack, token: str,
                                                        cli_env: dict[str, str], tmp_path: Path) -> None:
    rows = _reviews(60, "rate")
    data = texts_csv(tmp_path / "rate.csv", rows)
    env = {**cli_env, "KASHF_URL": tight_gateway.url}
    started = time.monotonic()
    done = kashf(env, "import", "cli-rate", str(data), "--batch", "2", "--concurrency", "4")
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert summary_value(done.stdout, "reported now") == "60"
    retries = int(summary_value(done.stdout, "retries"))
    assert retries > 0 and "rate_limited" in done.stderr  # each retry is noted on stderr
    # 30 report requests plus 6 to set up, 4 of them in the burst: the rest at 4 a second.
    assert elapsed >= (36 - TIGHT_BURST) / 4 - 1
    with Client(stack.url, token) as client:
        info = client.dataset_info("cli-rate")
    assert info.report_count == 60 and info.data_count == 60


def test_a_429_is_retried_after_the_servers_retry_after(tight_gateway: Stack, token: str) -> None:
    waits: list[tuple[float | None, float]] = []
    with Client(tight_gateway.url, token, on_retry=lambda e, d: waits.append((e.retry_after, d))) as client:
        client.create_dataset("cli-retry-after", kind="text")
        started = time.monotonic()
        for _ in range(TIGHT_BURST + 4):
            client.list_datasets()
        elapsed = time.monotonic() - started
    assert waits, "the burst was exhausted: at least one 429"
    assert all(after is not None and after >= 1 and delay >= after for after, delay in waits)
    assert elapsed >= sum(delay for _, delay in waits)


def test_lists_are_split_under_the_limit_a_413_names(tight_gateway: Stack, token: str) -> None:
    with Client(tight_gateway.url, token, limits=Limits(max_items=256)) as client:
        tag = client.create_tag("cli-chunks", "t")
        texts = [f"chunked text {i}" for i in range(3 * TIGHT_MAX_ITEMS + 3)]
        reports = client.report_text_tags([TextReport(content=t, tag_id=tag.tag_id) for t in texts])
        assert client.limits.max_items == TIGHT_MAX_ITEMS
        assert len(reports) == len(texts) and len({r.id for r in reports}) == len(texts)
        answers = client.tag_texts("cli-chunks", texts)
    assert [a.content for a in answers] == texts
    # A single text over the limit cannot be split: the server's 413 reaches the caller.
    with Client(tight_gateway.url, token) as client, pytest.raises(KashfError) as caught:
        client.tag_texts("cli-chunks", ["x" * 6000])
    assert caught.value.status == 413 and "KASHF_MAX_TEXT_CHARS" in caught.value.detail


def test_an_import_killed_half_way_completes_on_a_rerun(stack: Stack, tight_gateway: Stack, token: str,
                                                        cli_env: dict[str, str], tmp_path: Path) -> None:
    rows = _reviews(40, "resume")
    data = texts_csv(tmp_path / "resume.csv", rows)
    state = tmp_path / "resume-state.jsonl"
    env = {**cli_env, "KASHF_URL": tight_gateway.url}
    args = ["import", "cli-resume", str(data), "--batch", "2", "--concurrency", "1", "--state", str(state)]
    # 20 report requests at 4 a second past the burst: killed (SIGKILL, no clean-up) after 4 acknowledged.
    proc = subprocess.Popen([sys.executable, "-m", "kashf_client", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _acknowledged(state) < 8:
        assert proc.poll() is None, "the import ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    acknowledged = _acknowledged(state)
    assert 8 <= acknowledged < 40
    with Client(stack.url, token) as client:
        assert client.dataset_info("cli-resume").report_count < 40

    rerun = kashf(env, *args)
    assert rerun.returncode == 0, rerun.stderr
    skipped = int(summary_value(rerun.stdout, "already reported (skipped)"))
    assert skipped >= acknowledged
    assert int(summary_value(rerun.stdout, "reported now")) == 40 - skipped
    with Client(stack.url, token) as client:
        info = client.dataset_info("cli-resume")
    assert info.report_count == 40 and info.data_count == 40


def _acknowledged(state: Path) -> int:
    if not state.exists():
        return 0
    total = 0
    for line in state.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):  # a line being written
            total += len(json.loads(line).get("done", []))
    return total
