"""Dynamic batching: concurrent requests' items merged into model calls run off the event loop.

A worker takes up to ``max_batch`` queued items once it has that many or the oldest waited ``max_wait_ms``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import structlog

from modelkit.metrics import Metrics, default_metrics
from shared.errors import Overloaded, TooLarge, Unavailable

In = TypeVar("In")
Out = TypeVar("Out")

log = structlog.get_logger(__name__)


@dataclass(eq=False)
class _Request(Generic[Out]):
    future: asyncio.Future[list[Out]]
    results: list[Any]
    remaining: int

    def put(self, index: int, value: Out) -> None:
        if self.future.done():
            return
        self.results[index] = value
        self.remaining -= 1
        if self.remaining == 0:
            self.future.set_result(self.results)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass(eq=False)
class _Entry(Generic[In, Out]):
    request: _Request[Out]
    index: int
    item: In
    enqueued: float = field(default_factory=time.monotonic)


class DynamicBatcher(Generic[In, Out]):
    """Merge concurrent ``submit`` calls into calls of ``fn(items) -> outputs`` (same length, same order).

    ``workers`` model calls may run at once: one suits ONNX Runtime, which parallelises inside a call.
    """

    def __init__(
        self,
        fn: Callable[[list[In]], Sequence[Out]],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 4.0,
        max_queue: int = 1024,
        workers: int = 1,
        executor: ThreadPoolExecutor | None = None,
        name: str = "model",
        metrics: Metrics | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or workers < 1:
            raise ValueError("max_batch, max_queue and workers must be at least 1")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.workers = workers
        self.name = name
        self._own_executor = executor is None
        self._executor = executor
        self._queue: deque[_Entry[In, Out]] = deque()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        m = metrics or default_metrics()
        self._batch_size = m.batch_size.labels(batcher=name)
        self._queue_depth = m.queue_depth.labels(batcher=name)
        self._model_seconds = m.model_seconds.labels(batcher=name)

    @property
    def pending(self) -> int:
        """Items queued and not yet taken into a model call."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not self._stopping

    def start(self) -> None:
        """Start the worker tasks; call from inside the event loop."""
        if self._tasks:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=self.name)
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._work(), name=f"{self.name}-{i}") for i in range(self.workers)
        ]

    async def stop(self) -> None:
        """Refuse new work, finish everything queued, then release the threads."""
        self._stopping = True
        self._wakeup.set()
        if self._tasks:
            await asyncio.gather(*self._tasks)
        self._tasks = []
        if self._own_executor and self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, items: list[In]) -> list[Out]:
        """Outputs for ``items`` in their order; raises Overloaded (429) at once when the queue is full."""
        if not items:
            return []
        if not self._tasks or self._stopping:
            raise Unavailable(f"{self.name} is not running")
        if len(items) > self.max_queue:
            raise TooLarge(f"{len(items)} items in one request; {self.name} queues at most {self.max_queue}")
        if len(self._queue) + len(items) > self.max_queue:
            raise Overloaded(f"{self.name} queue is full ({self.max_queue} items); retry later")
        future: asyncio.Future[list[Out]] = asyncio.get_running_loop().create_future()
        request: _Request[Out] = _Request(future, [None] * len(items), len(items))
        now = time.monotonic()
        self._queue.extend(_Entry(request, i, item, now) for i, item in enumerate(items))
        self._queue_depth.set(len(self._queue))
        self._wakeup.set()
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            self._batch_size.observe(len(batch))
            start = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._executor, self._call, [e.item for e in batch])
            except Exception as exc:
                self._model_seconds.observe(time.perf_counter() - start)
                await self._fail(batch, exc)
                continue
            self._model_seconds.observe(time.perf_counter() - start)
            for entry, output in zip(batch, outputs, strict=True):
                entry.request.put(entry.index, output)

    def _call(self, items: list[In]) -> Sequence[Out]:
        outputs = self.fn(items)
        if len(outputs) != len(items):
            raise RuntimeError(f"{self.name} returned {len(outputs)} outputs for {len(items)} inputs")
        return outputs

    async def _fail(self, batch: list[_Entry[In, Out]], exc: Exception) -> None:
        """Fail only the requests whose own items fail: re-run each request's part of a mixed batch alone."""
        groups: dict[_Request[Out], list[_Entry[In, Out]]] = {}
        for entry in batch:
            groups.setdefault(entry.request, []).append(entry)
        if len(groups) == 1:
            next(iter(groups)).fail(exc)
            return
        log.warning("batch_failed_isolating", batcher=self.name, requests=len(groups), error=repr(exc))
        loop = asyncio.get_running_loop()
        for request, entries in groups.items():
            if request.future.done():
                continue
            try:
                outputs = await loop.run_in_executor(self._executor, self._call, [e.item for e in entries])
            except Exception as own:
                request.fail(own)
                continue
            for entry, output in zip(entries, outputs, strict=True):
                request.put(entry.index, output)

    async def _next_batch(self) -> list[_Entry[In, Out]] | None:
        """Wait for a full batch or the oldest item's deadline; None once stopping with nothing queued."""
        while True:
            if not await self._wait_ready():
                return None
            batch: list[_Entry[In, Out]] = []
            while self._queue and len(batch) < self.max_batch:
                entry = self._queue.popleft()
                if not entry.request.future.done():
                    batch.append(entry)
            self._queue_depth.set(len(self._queue))
            if batch:  # else another worker took them, or their callers gave up
                return batch

    async def _wait_ready(self) -> bool:
        while True:
            self._drop_abandoned()
            if self._queue:
                if len(self._queue) >= self.max_batch or self._stopping:
                    return True
                remaining = self._queue[0].enqueued + self.max_wait_s - time.monotonic()
                if remaining <= 0:
                    return True
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            elif self._stopping:
                return False
            else:
                self._wakeup.clear()
                await self._wakeup.wait()

    def _drop_abandoned(self) -> None:
        # A cancelled caller (its client timed out) must not cost model time.
        while self._queue and self._queue[0].request.future.done():
            self._queue.popleft()
