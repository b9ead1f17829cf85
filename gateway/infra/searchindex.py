"""search's in-memory index: per (dataset, model), the unit-norm float32 matrix of the items' embeddings.

Brute force over a cached matrix: exact, 0.7 ms at 10k items and 10 ms at 100k on 2 cores, where loading
the vectors from Postgres per query takes 100x to 150x as long (``python -m bench.search``, README). An entry
lives ``ttl_s`` (new items show within that) and the least recently used go beyond ``max_entries``."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from gateway.infra.singleflight import SingleFlight


@dataclass(frozen=True)
class Matrix:
    ids: np.ndarray  # (n,) int64, ascending
    vectors: np.ndarray  # (n, dim) float32, unit norm

    @classmethod
    def from_rows(cls, ids: list[int], raw: list[bytes], dim: int) -> Matrix:
        if not ids:
            return cls(np.zeros(0, dtype=np.int64), np.zeros((0, max(dim, 1)), dtype=np.float32))
        x = np.frombuffer(b"".join(raw), dtype=np.float32).reshape(len(ids), dim)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return cls(np.asarray(ids, dtype=np.int64), x / np.where(norms > 0, norms, 1.0))

    def nearest(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` items of highest cosine to ``query``, best first."""
        if not len(self.ids) or query.shape[-1] != self.vectors.shape[1]:
            return []
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        q = q / (float(np.linalg.norm(q)) or 1.0)
        scores = self.vectors @ q
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(self.ids[i]), float(scores[i])) for i in top]


class SearchIndex:
    """(dataset id, model id) -> ``Matrix``; concurrent misses of one key share one load."""

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[int, str], tuple[Matrix, float]] = OrderedDict()
        self._loads: SingleFlight[tuple[int, str], Matrix] = SingleFlight()

    async def get(self, dataset_id: int, model_id: str, load: Callable[[], Awaitable[Matrix]]) -> Matrix:
        key = (dataset_id, model_id)
        found = self._entries.get(key)
        if found is not None and self._clock() < found[1]:
            self._entries.move_to_end(key)
            return found[0]

        async def load_and_keep() -> Matrix:
            matrix = await load()
            if self.ttl_s > 0 and self._max > 0:
                self._entries[key] = (matrix, self._clock() + self.ttl_s)
                self._entries.move_to_end(key)
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
            return matrix

        return await self._loads.do(key, load_and_keep)

    def invalidate(self, dataset_id: int) -> None:
        for key in [k for k in self._entries if k[0] == dataset_id]:
            del self._entries[key]
