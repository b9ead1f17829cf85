"""How model services share out their CPUs: cgroup quotas read like Kubernetes sets them, and the layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from modelkit.onnx.layout import MAX_AUTO_WORKERS, ModelLayout, available_cpus, load_model, model_layout
from modelkit.onnx.session import Device, cuda_available
from shared.errors import Unavailable
from shared.settings import TextServiceSettings

AFFINITY = len(os.sched_getaffinity(0))


def _cgroup_v2(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(text)
    return root


def _cgroup_v1(root: Path, quota_us: int, period_us: int) -> Path:
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(f"{period_us}\n")
    return root


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", AFFINITY),  # no limit
        ("50000 100000\n", 1),  # limits.cpu: 500m still gets one model thread
        ("100000 100000\n", 1),
        ("150000 100000\n", min(AFFINITY, 2)),  # 1.5 CPUs round up
        (f"{100000 * (AFFINITY + 8)} 100000\n", AFFINITY),  # a quota above the cores it may run on
    ],
)
def test_cgroup_v2_quota_caps_the_cpus(tmp_path: Path, cpu_max: str, expected: int) -> None:
    assert available_cpus(_cgroup_v2(tmp_path, cpu_max)) == expected


def test_cgroup_v1_quota_caps_the_cpus(tmp_path: Path) -> None:
    assert available_cpus(_cgroup_v1(tmp_path / "a", 100000, 100000)) == 1
    assert available_cpus(_cgroup_v1(tmp_path / "b", -1, 100000)) == AFFINITY


def test_unreadable_or_missing_cgroup_files_mean_no_limit(tmp_path: Path) -> None:
    assert available_cpus(tmp_path / "absent") == AFFINITY
    assert available_cpus(_cgroup_v2(tmp_path / "junk", "garbage")) == AFFINITY


@pytest.mark.parametrize(
    ("cpus", "workers", "threads", "expected"),
    [
        (1, None, None, ModelLayout(1, 1)),
        (2, None, None, ModelLayout(2, 1)),  # measured best on 2 cores (bench/text.py)
        (16, None, None, ModelLayout(MAX_AUTO_WORKERS, 16 // MAX_AUTO_WORKERS)),
        (2, 1, None, ModelLayout(1, 2)),  # KASHF_MODEL_WORKERS=1: one call over both cores
        (8, 2, 3, ModelLayout(2, 3)),  # both set: taken as they are
    ],
)
def test_cpu_layout(cpus: int, workers: int | None, threads: int | None, expected: ModelLayout) -> None:
    assert model_layout("cpu", workers, threads, cpus=cpus) == expected


def test_image_services_default_to_one_call_over_every_core() -> None:
    assert model_layout("cpu", cpus=8, max_auto_workers=1) == ModelLayout(1, 8)
    assert model_layout("cpu", 2, cpus=8, max_auto_workers=1) == ModelLayout(2, 4)  # unless configured


@pytest.mark.skipif(cuda_available(), reason="this onnxruntime has CUDA")
def test_asking_for_cuda_without_it_is_an_error() -> None:
    with pytest.raises(Unavailable, match="CUDAExecutionProvider"):
        model_layout("cuda")


def test_settings_refuse_zero_workers_or_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KASHF_MODEL_WORKERS", "0")
    with pytest.raises(ValidationError, match="KASHF_MODEL_WORKERS"):
        TextServiceSettings()  # type: ignore[call-arg]
    monkeypatch.setenv("KASHF_MODEL_WORKERS", "3")
    monkeypatch.setenv("KASHF_THREADS", "2")
    settings = TextServiceSettings()  # type: ignore[call-arg]
    assert model_layout("cpu", settings.model_workers, settings.threads, cpus=2) == ModelLayout(3, 2)


def test_load_model_builds_with_the_layouts_threads_and_warms_up(tmp_path: Path) -> None:
    built: list[tuple[Path, str, int | None]] = []

    class Model:
        model_id, dim, device = "m@1", 4, "cpu"
        warm = False

        def __init__(self, model_dir: Path, device: Device, threads: int | None) -> None:
            built.append((model_dir, device, threads))

        def warmup(self) -> None:
            self.warm = True

    model = load_model(Model, tmp_path, "cpu", ModelLayout(2, 1))
    assert built == [(tmp_path, "cpu", 1)] and model.warm
