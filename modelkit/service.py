"""What the three model services share: one encoder behind a dynamic batcher (plus an optional
worker pool for decoding), and head lookup checked against the model being served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np
import structlog

from modelkit.batcher import DynamicBatcher
from modelkit.heads import Head
from modelkit.metrics import Metrics
from shared.errors import Unavailable
from shared.schemas.inference import HeadRef
from shared.settings import InferenceSettings

log = structlog.get_logger(__name__)

In = TypeVar("In")


class ModelInfo(Protocol):
    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...


class HeadSource(Protocol):
    """Where heads come from (modelkit.heads.HeadCache over the object store)."""

    async def get(self, ref: HeadRef) -> Head | None: ...


class HeadModelMismatch(Unavailable):
    code = "head_model_mismatch"


@dataclass(frozen=True)
class Batching:
    """How the dynamic batcher merges requests (KASHF_MAX_BATCH / _WAIT_MS / _QUEUE) and model calls at once."""

    max_batch: int = 32
    max_wait_ms: float = 4.0
    max_queue: int = 1024
    workers: int = 1
    metrics: Metrics | None = None

    @classmethod
    def of(cls, settings: InferenceSettings, workers: int) -> Batching:
        return cls(settings.max_batch, settings.max_wait_ms, settings.max_queue, workers)


DEFAULT_BATCHING = Batching()


class BatchedModelService(Generic[In]):
    """Owns the batcher: ``workers`` model calls at once (``modelkit.onnx.layout``)."""

    def __init__(
        self,
        encoder: ModelInfo,
        heads: HeadSource,
        encode_batch: Callable[[list[In]], Sequence[np.ndarray]],
        *,
        name: str,
        batching: Batching,
        pool_workers: int = 0,
    ) -> None:
        self.encoder = encoder
        self.heads = heads
        self._pool_workers = pool_workers
        self._pool: ThreadPoolExecutor | None = None
        self.batcher: DynamicBatcher[In, np.ndarray] = DynamicBatcher(
            encode_batch, max_batch=batching.max_batch, max_wait_ms=batching.max_wait_ms,
            max_queue=batching.max_queue, workers=batching.workers, name=name, metrics=batching.metrics,
        )
        self._name = name

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def ready(self) -> bool:
        return self.batcher.running and (self._pool_workers == 0 or self._pool is not None)

    def start(self) -> None:
        if self._pool_workers and self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._pool_workers, thread_name_prefix=self._name)
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown, wait=True)

    async def head_for(self, ref: HeadRef) -> Head | None:
        """The dataset's head; one fitted on another embedding model is a 503 ``head_model_mismatch``
        (retrain the dataset), never a silent "unknown" that looks like an answer."""
        head = await self.heads.get(ref)
        if head is not None and (head.model_id != self.model_id or head.dim != self.dim):
            log.warning("head_model_mismatch", dataset_id=ref.dataset_id, version=head.version,
                        head_model=head.model_id, service_model=self.model_id)
            raise HeadModelMismatch(
                f"the head of this dataset was fitted on model {head.model_id!r}, this service runs "
                f"{self.model_id!r}: retrain the dataset"
            )
        return head
