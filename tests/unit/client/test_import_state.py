"""The import's progress file: what a re-run skips, and when earlier progress no longer counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from kashf_client.importer import ImportState, state_path


def test_acknowledged_keys_survive_a_cut_line(tmp_path: Path) -> None:
    state = ImportState(tmp_path / "s.jsonl")
    state.load({"good": 1})
    state.open()
    state.record(["k1:good", "k2:good"])
    state.close()
    with state.path.open("a", encoding="utf-8") as f:
        f.write('{"done": ["k3:go')  # killed mid-write
    again = ImportState(state.path)
    again.load({"good": 1, "bad": 2})
    assert again.done == {"k1:good", "k2:good"}


def test_progress_is_dropped_when_a_tag_was_made_again(tmp_path: Path) -> None:
    state = ImportState(tmp_path / "s.jsonl")
    state.load({"good": 1})
    state.open()
    state.record(["k1:good"])
    state.close()
    recreated = ImportState(state.path)
    recreated.load({"good": 7})  # the dataset was deleted and imported into again
    assert recreated.done == set()


def test_one_state_file_per_server_account_and_dataset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KASHF_CACHE_DIR", str(tmp_path))
    a = state_path("http://a", "token-1", "reviews")
    assert a.parent == tmp_path / "imports" and "token-1" not in a.name
    assert len({a, state_path("http://b", "token-1", "reviews"), state_path("http://a", "token-2", "reviews"),
                state_path("http://a", "token-1", "photos")}) == 4
