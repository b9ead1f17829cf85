"""How a model service spreads its model calls over the CPUs it may use.

Text on CPU: several calls at once on few threads each; images and GPU: one call at a time (why: below).
"""

# For text on CPU the default is several model calls at once, each on few intra-op threads, instead of
# one call spread over every core. Measured in ``bench/text.py`` on 2 cores: 2 concurrent single-thread
# calls did the same work with about 10% less CPU per text than one 2-thread call (no thread sync inside
# a call), and kept working while the gateway and the bus client took a core, where a 2-thread call
# waited for its slower thread: the whole stack went from 0.73 to 1.01 of the in-process model.
# The image services already keep the cores busy with their decode threads; there one call at a time
# measured level with two or better (``python -m bench.image`` against the same with
# ``--service-env KASHF_MODEL_WORKERS=2``: single image p50 32 against 38 ms), so they default to one.
# On GPU one call at a time feeds the device.

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import structlog

from modelkit.onnx.session import Device, resolve_device

log = structlog.get_logger(__name__)

# Auto mode stops here for text: more calls at once means smaller batches out of the same queue.
MAX_AUTO_WORKERS = 4


@dataclass(frozen=True)
class ModelLayout:
    workers: int  # model calls running at once
    threads: int | None  # intra-op threads per call; None: ONNX Runtime's own choice


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the container's CFS quota allows (Kubernetes ``limits.cpu``), None without a limit."""
    v2 = root / "cpu.max"
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = root / "cpu"
        quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
        period_us = int((v1 / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup quota (rounded up, at least 1)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def model_layout(device: Device, workers: int | None = None, threads: int | None = None,
                 cpus: int | None = None, max_auto_workers: int = MAX_AUTO_WORKERS) -> ModelLayout:
    """``workers`` / ``threads`` as configured, or chosen for the device and the CPUs available."""
    if resolve_device(device) == "cuda":
        return ModelLayout(workers or 1, threads)
    cpus = cpus or available_cpus()
    workers = workers or min(cpus, max_auto_workers)
    return ModelLayout(workers, threads or max(1, cpus // workers))


class _Model(Protocol):
    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def device(self) -> str: ...

    def warmup(self) -> None: ...


M = TypeVar("M", bound=_Model)


def load_model(factory: Callable[[Path, Device, int | None], M], model_dir: Path, device: Device,
               layout: ModelLayout) -> M:
    """``factory(model_dir, device, threads)`` (an encoder class), warmed up and logged; blocking: call in a thread."""
    model = factory(model_dir, device, layout.threads)
    model.warmup()
    log.info("model_loaded", model_id=model.model_id, dim=model.dim, device=model.device, workers=layout.workers,
             threads=layout.threads, model_dir=str(model_dir))
    return model
