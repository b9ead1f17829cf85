"""Fitted per-dataset classifier heads: the blob format, tag selection and a cache for the services.

A tag is predicted when ``p`` reaches its threshold; how ``p`` is computed: below.
"""

# Linear per tag on frozen embeddings, Platt-calibrated logits ``z = a * (x @ w + b) + c``; ``p = sigmoid(z)``,
# or for an exclusive head ``p_t = sigmoid(z_t - max(none, other z))``.

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
import numpy as np
import structlog
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from modelkit.metrics import Metrics, default_metrics
from shared import subjects
from shared.bus.objects import CorruptObjectError, read_object
from shared.bus.streams import declare_object_store, heads_config
from shared.errors import Internal, Unavailable
from shared.schemas.inference import UNKNOWN_TAG_ID, UNKNOWN_TITLE, HeadRef, ScoredTag, TagRef

log = structlog.get_logger(__name__)

ZERO_SHOT_THRESHOLD = 0.5
FORMAT_VERSION = 2  # 2 added "exclusive" and "none_logit" to the meta record; format 1 blobs still load
_READABLE = (1, 2)
_ARRAYS = ("tag_ids", "weights", "bias", "calibration", "thresholds")


def unknown_tag() -> ScoredTag:
    return ScoredTag(id=UNKNOWN_TAG_ID, title=UNKNOWN_TITLE, probability=1.0)


def sigmoid(z: np.ndarray) -> np.ndarray:
    # Clipping keeps exp() finite; probabilities saturate long before |z| = 40.
    out: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))
    return out


def exclusive_probabilities(z: np.ndarray, none_logit: float) -> np.ndarray:
    """Row-wise ``sigmoid(z_t - max(none_logit, max of the other z))``; only the top tag can reach 0.5."""
    z = np.asarray(z, dtype=np.float64).reshape(-1, np.shape(z)[-1])
    k = z.shape[1]
    rival = np.full(z.shape, float(none_logit))
    if k > 1:
        order = np.argsort(-z, axis=1)
        top, second = np.take_along_axis(z, order[:, :1], axis=1), np.take_along_axis(z, order[:, 1:2], axis=1)
        # Every tag's strongest rival is the top tag, except the top tag's own, which is the second.
        others = np.where(np.arange(k)[None, :] == order[:, :1], second, top)
        rival = np.maximum(rival, others)
    return sigmoid(z - rival)


@dataclass(frozen=True)
class Head:
    """One fitted multi-label head of one dataset."""

    model_id: str
    version: int
    tag_ids: np.ndarray  # (k,) int64
    weights: np.ndarray  # (k, dim) float32
    bias: np.ndarray  # (k,) float32
    calibration: np.ndarray  # (k, 2) float32: a, c of sigmoid(a * raw + c)
    thresholds: np.ndarray  # (k,) float32, on the calibrated probability
    exclusive: bool = False  # tags compete (see exclusive_probabilities) instead of independent sigmoids
    none_logit: float = 0.0  # for an exclusive head: the logit at which "none" (unknown) wins

    def __post_init__(self) -> None:
        k = self.tag_ids.shape[0]
        if (self.weights.ndim != 2 or self.weights.shape[0] != k or self.bias.shape != (k,)
                or self.calibration.shape != (k, 2) or self.thresholds.shape != (k,)):
            raise ValueError("inconsistent head arrays")

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    def decision(self, vectors: np.ndarray) -> np.ndarray:
        """Raw linear scores ``x @ w + b``, shape (n, k)."""
        x = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        out: np.ndarray = x @ self.weights.T + self.bias
        return out

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, shape (n, k)."""
        raw = self.decision(vectors).astype(np.float64)
        z = self.calibration[:, 0] * raw + self.calibration[:, 1]
        return exclusive_probabilities(z, self.none_logit) if self.exclusive else sigmoid(z)

    def to_bytes(self) -> bytes:
        """An ``.npz`` archive: the arrays plus a JSON meta record (no pickle)."""
        meta = json.dumps({"format": FORMAT_VERSION, "model_id": self.model_id, "version": self.version,
                           "exclusive": self.exclusive, "none_logit": self.none_logit})
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            meta=np.frombuffer(meta.encode(), dtype=np.uint8),
            tag_ids=self.tag_ids.astype(np.int64),
            weights=self.weights.astype(np.float32),
            bias=self.bias.astype(np.float32),
            calibration=self.calibration.astype(np.float32),
            thresholds=self.thresholds.astype(np.float32),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Head:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                meta: dict[str, Any] = json.loads(npz["meta"].tobytes().decode())
                arrays = {name: npz[name] for name in _ARRAYS}
        except (OSError, ValueError, KeyError) as exc:
            raise Internal("stored head is unreadable") from exc
        if meta.get("format") not in _READABLE:
            raise Internal(f"stored head has unknown format {meta.get('format')!r}")
        return cls(
            model_id=str(meta["model_id"]),
            version=int(meta["version"]),
            tag_ids=arrays["tag_ids"].astype(np.int64),
            weights=arrays["weights"].astype(np.float32),
            bias=arrays["bias"].astype(np.float32),
            calibration=arrays["calibration"].astype(np.float32),
            thresholds=arrays["thresholds"].astype(np.float32),
            exclusive=bool(meta.get("exclusive", False)),
            none_logit=float(meta.get("none_logit", 0.0)),
        )


def tag_vectors(
    head: Head | None,
    vectors: np.ndarray,
    active: Sequence[TagRef],
    zero_shot: np.ndarray | None = None,
    *,
    top_k: int | None = None,
    min_probability: float | None = None,
) -> list[list[ScoredTag]]:
    """Per row: every active tag passing its threshold, highest first (at most ``top_k``), else the unknown tag.

    A tag's threshold is its ``TagRef.threshold`` when set (update_tag), else the head's learned one. Tags
    absent from the head are scored only from ``zero_shot`` (n, len(active)), at threshold 0.5 unless
    overridden. ``min_probability`` replaces every threshold for this call; a tag nothing can score never passes.
    """
    x = np.asarray(vectors, dtype=np.float32)
    n = x.shape[0]
    if zero_shot is not None and zero_shot.shape != (n, len(active)):
        raise ValueError(f"zero_shot must have shape ({n}, {len(active)})")
    probs = np.zeros((n, len(active)), dtype=np.float64)
    thresholds = np.full(len(active), np.inf)  # a tag nobody can score never passes
    if head is not None and head.tag_ids.size and n:
        column = {int(t): j for j, t in enumerate(head.tag_ids.tolist())}
        head_probs = head.probabilities(x)
        for i, tag in enumerate(active):
            j = column.get(tag.id)
            if j is not None:
                probs[:, i] = head_probs[:, j]
                thresholds[i] = float(head.thresholds[j])
    if zero_shot is not None:
        for i in range(len(active)):
            if not np.isfinite(thresholds[i]):
                probs[:, i] = zero_shot[:, i]
                thresholds[i] = ZERO_SHOT_THRESHOLD
    scored = np.isfinite(thresholds)
    for i, tag in enumerate(active):
        if scored[i] and tag.threshold is not None:
            thresholds[i] = tag.threshold
    if min_probability is not None:
        thresholds = np.where(scored, min_probability, np.inf)
    out: list[list[ScoredTag]] = []
    for row in range(n):
        passing = [i for i in range(len(active)) if probs[row, i] >= thresholds[i]]
        passing.sort(key=lambda i: -probs[row, i])
        tags = [ScoredTag(id=active[i].id, title=active[i].title, probability=round(float(probs[row, i]), 2))
                for i in passing[:top_k]]
        out.append(tags or [unknown_tag()])
    return out


def object_name(dataset_id: int, version: int) -> str:
    return f"dataset-{dataset_id}-v{version}"


async def _bucket(js: JetStreamContext, *, create: bool) -> ObjectStore:
    try:
        return await js.object_store(subjects.HEADS_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        if not create:
            raise
        # Only if it was deleted since the processes started: the next start applies the replicas setting.
        return await declare_object_store(js, heads_config(), None)


async def store_head(js: JetStreamContext, dataset_id: int, head: Head) -> str:
    """Put the head blob into the heads bucket and return its object name."""
    name = object_name(dataset_id, head.version)
    data = head.to_bytes()
    try:
        store = await _bucket(js, create=True)
        await store.put(name, data)
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise Unavailable("head store unavailable") from exc
    return name


async def prune_heads(js: JetStreamContext, dataset_id: int, live_version: int, keep: int) -> list[str]:
    """Delete the dataset's heads older than ``live_version - keep``; returns the names deleted, oldest first.

    Best effort (a failure is logged; the next prune finishes the job); versions above the live one are never
    touched."""
    # Versions are numbered 1, 2, ... and deleted oldest first, so what is left of the old ones is always an
    # unbroken run ending just below the kept ones: probing down from there finds all of it.
    deleted: list[str] = []
    try:
        store = await _bucket(js, create=False)
        oldest = newest = live_version - keep - 1
        while oldest >= 1 and await _exists(store, object_name(dataset_id, oldest)):
            oldest -= 1
        for version in range(oldest + 1, newest + 1):
            name = object_name(dataset_id, version)
            with contextlib.suppress(nats.js.errors.ObjectNotFoundError):
                await store.delete(name)
            deleted.append(name)
    except (nats.js.errors.BucketNotFoundError, TimeoutError, nats.errors.Error, OSError) as exc:
        log.warning("head_prune_failed", dataset_id=dataset_id, deleted=len(deleted), error=type(exc).__name__)
    return deleted


async def delete_heads(js: JetStreamContext, names: Sequence[str]) -> None:
    """Delete these head blobs; one already gone counts as deleted. Unavailable when the store cannot be
    reached (the caller keeps their version rows, so a later retention pass deletes them again)."""
    if not names:
        return
    try:
        store = await _bucket(js, create=False)
        for name in names:
            with contextlib.suppress(nats.js.errors.ObjectNotFoundError):
                await store.delete(name)
    except nats.js.errors.BucketNotFoundError:
        return  # nothing left to delete
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise Unavailable("head store unavailable") from exc


async def _exists(store: ObjectStore, name: str) -> bool:
    try:
        await store.get_info(name)
    except nats.js.errors.ObjectNotFoundError:  # never stored, or deleted
        return False
    return True


async def load_head(js: JetStreamContext, dataset_id: int, version: int) -> Head:
    """Read one head version; Unavailable when it is missing or the store cannot be reached.

    The blob is read without a JetStream consumer (``shared.bus.objects``: cold loads of many datasets would
    otherwise run into the server's consumer limit), then decompressed and parsed in a worker thread: about 2 ms
    for a text head of 50 tags, 16 ms for 200 tags of an image model (``python -m bench.heads --track load``),
    which on the event loop would stall every request in flight."""
    name = object_name(dataset_id, version)
    try:
        store = await _bucket(js, create=False)
        data = await read_object(js, store, subjects.HEADS_BUCKET, name)
    except (nats.js.errors.ObjectNotFoundError, nats.js.errors.BucketNotFoundError) as exc:
        raise Unavailable(f"head {name} not found") from exc
    except CorruptObjectError as exc:
        raise Internal(f"stored head {name} is corrupt") from exc
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise Unavailable("head store unavailable") from exc
    return await asyncio.to_thread(Head.from_bytes, data)


class HeadCache:
    """LRU of loaded heads keyed by (dataset_id, version); concurrent gets of one key load once. It holds at
    most ``max_entries`` heads (``KASHF_HEAD_CACHE_ENTRIES``): memory is about that many times a head's arrays
    (tags x embedding dimensions x 4 bytes)."""

    def __init__(self, js: JetStreamContext, max_entries: int = 256, metrics: Metrics | None = None) -> None:
        if max_entries < 1:
            raise ValueError("a head cache holds at least one head")
        self._js = js
        self._max = max_entries
        self._heads: OrderedDict[tuple[int, int], Head] = OrderedDict()
        self._loading: dict[tuple[int, int], asyncio.Task[Head]] = {}
        self._loads = (metrics or default_metrics()).head_loads

    def __len__(self) -> int:
        return len(self._heads)

    async def get(self, ref: HeadRef) -> Head | None:
        if ref.version is None:
            return None
        key = (ref.dataset_id, ref.version)
        head = self._heads.get(key)
        if head is not None:
            self._heads.move_to_end(key)
            return head
        task = self._loading.get(key)
        if task is None:
            # The load runs as its own task so a cancelled caller does not cancel it for the others.
            task = asyncio.create_task(self._load(key))
            # Mark a failure retrieved even when every caller was cancelled before it came.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._loading[key] = task
        return await asyncio.shield(task)

    async def _load(self, key: tuple[int, int]) -> Head:
        try:
            self._loads.inc()
            head = await load_head(self._js, *key)
        finally:
            self._loading.pop(key, None)
        self._heads[key] = head
        while len(self._heads) > self._max:
            self._heads.popitem(last=False)
        return head
