"""Build keys and caching: a current build is a no-op, a fresh clone copies from the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelbuild.build import (
    DEFAULT_CACHE,
    Target,
    Timer,
    build_key,
    build_target,
    default_targets,
    up_to_date,
)
from modelbuild.export import write_manifest
from modelkit.onnx.manifest import ModelManifest, SourcePackage, TextPreprocessing
from tests.unit.models.conftest import REPO, models_root


def _counting_target(calls: list[Path], version: str = "1.0") -> Target:
    def build(work: Path, cache_dir: Path, key: str, timer: Timer) -> ModelManifest:
        calls.append(work)
        (work / "model.onnx").write_bytes(b"weights " + version.encode())
        manifest = ModelManifest(
            name="probe", modality="text", dim=4, preprocessing=TextPreprocessing(), opset=18,
            files={"model.onnx": "0" * 64}, cpu_file="model.onnx", gpu_file="model.onnx",
            inputs=["input_ids", "attention_mask"], outputs=["embedding"], build_key=key,
        )
        write_manifest(work, manifest)
        return manifest

    return Target("text", "probe", (SourcePackage(package="probe", version=version),), build)


def test_second_build_is_a_no_op_and_a_fresh_clone_copies_from_cache(tmp_path: Path) -> None:
    calls: list[Path] = []
    cache = tmp_path / "cache"
    target = _counting_target(calls)
    assert build_target(target, tmp_path / "a", cache) == "built"
    assert build_target(target, tmp_path / "a", cache) == "up-to-date"
    assert build_target(target, tmp_path / "clone", cache) == "from-cache"
    assert len(calls) == 1
    assert (tmp_path / "clone/text/probe/model.onnx").read_bytes() == b"weights 1.0"
    # a new source version is a new key: rebuilt, and the old folder replaced whole
    assert build_target(_counting_target(calls, "2.0"), tmp_path / "a", cache) == "built"
    assert (tmp_path / "a/text/probe/model.onnx").read_bytes() == b"weights 2.0"
    assert not [p for p in (tmp_path / "a/text").iterdir() if p.name.startswith(".")]
    # the cache keeps the two newest builds of a target, so it does not grow with every code change
    assert build_target(_counting_target(calls, "3.0"), tmp_path / "a", cache) == "built"
    assert len(list((cache / "builds").iterdir())) == 2


def test_failed_build_leaves_the_previous_model_in_place(tmp_path: Path) -> None:
    calls: list[Path] = []
    assert build_target(_counting_target(calls), tmp_path, tmp_path / "cache") == "built"

    def broken(work: Path, cache_dir: Path, key: str, timer: Timer) -> ModelManifest:
        raise RuntimeError("exporter crashed")

    bad = Target("text", "probe", (SourcePackage(package="probe", version="3.0"),), broken)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        build_target(bad, tmp_path, tmp_path / "cache")
    assert (tmp_path / "text/probe/model.onnx").read_bytes() == b"weights 1.0"
    assert [p.name for p in (tmp_path / "text").iterdir()] == ["probe"]


def _current_targets() -> list[Target]:
    targets = default_targets()
    for t in targets:
        if not up_to_date(t.dest(models_root()), build_key(t)):
            pytest.skip(f"{t.dest(models_root())} is missing or older than the build code: run `make models`")
    return targets


@pytest.mark.models
def test_real_build_is_a_fast_no_op_when_current() -> None:
    _current_targets()
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "modelbuild", "build", "--out", str(models_root())],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )
    took = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "text/multilingual-e5-small: up-to-date" in proc.stdout
    assert "image/efficientnet-lite0: up-to-date" in proc.stdout
    assert took < 15, f"no-op build took {took:.1f}s"


@pytest.mark.models
def test_fresh_clone_takes_real_models_from_the_cache(tmp_path: Path) -> None:
    cache = DEFAULT_CACHE.expanduser()
    for target in _current_targets():
        key = build_key(target)
        if not up_to_date(cache / "builds" / f"{target.modality}-{target.name}-{key}", key):
            pytest.skip(f"{cache} holds no build {key} of {target.name}")
        assert build_target(target, tmp_path, cache) == "from-cache"
        copied = json.loads((target.dest(tmp_path) / "manifest.json").read_text())
        original = json.loads((target.dest(models_root()) / "manifest.json").read_text())
        assert copied == original
