"""Concurrent calls for one key share one run of the loader (an expired cache entry under load costs one read)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._running: dict[K, asyncio.Task[V]] = {}

    async def do(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """``load()``'s result, or its exception, for every caller that asks for ``key`` while it runs."""
        task = self._running.get(key)
        if task is None:
            # Its own task, so a caller that goes away (client disconnect) does not cancel it for the others.
            task = asyncio.ensure_future(load())
            self._running[key] = task
            task.add_done_callback(lambda t: self._finished(key, t))
        return await asyncio.shield(task)

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved, even when every caller went away
