"""What tagging needs of a dataset (its id, kind, head version and active tags), cached per replica: reading
these took two queries, a pool checkout and its ping on every tag request, about half of the gateway's CPU
per request in ``bench/text.py``. An entry lives ``ttl_s`` at most and goes sooner (see ``DatasetCache``)."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from gateway.infra.singleflight import SingleFlight
from shared.schemas.events import DatasetsChanged
from shared.schemas.inference import HeadRef, TagRef


@dataclass(frozen=True)
class DatasetView:
    dataset_id: int
    kind: str
    head: HeadRef
    tags: tuple[TagRef, ...]
    keep_inputs: bool = False  # the tag calls' inputs are kept as pool items (gateway.service.tagging)


class DatasetCache:
    """(account id, dataset name) -> ``DatasetView``; LRU-bounded, ``ttl_s <= 0`` turns it off."""

    # An entry goes before its TTL in the replica whose unit of work changed a tag or a dataset's kind,
    # as soon as it commits, and in every replica when a DATASETS_CHANGED broadcast arrives (gateways send
    # one after those commits, the trainer after it stores a new head). A broadcast lost to a reconnect
    # leaves an entry stale for ttl_s at most. A load that overlaps an invalidation is not stored, so a
    # reader that started before a commit cannot put back the old state. Concurrent misses of one key
    # share one load, so an expiry under load costs one read, not one per request.

    def __init__(self, ttl_s: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[int, str], tuple[DatasetView, float]] = OrderedDict()
        self._keys: dict[int, set[tuple[int, str]]] = {}  # dataset id -> its keys, for invalidation
        self._epoch = 0
        self._loads: SingleFlight[tuple[int, str], DatasetView] = SingleFlight()
        self.instance_id = uuid.uuid4().hex  # sent with this replica's broadcasts, which it skips itself

    def get(self, account_id: int, name: str) -> DatasetView | None:
        key = (account_id, name)
        found = self._entries.get(key)
        if found is None:
            return None
        view, expires = found
        if self._clock() >= expires:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return view

    async def get_or_load(self, account_id: int, name: str, load: Callable[[], Awaitable[DatasetView]]) -> DatasetView:
        """The cached view, or what ``load()`` returns; callers missing the same key at once share one load."""
        view = self.get(account_id, name)
        if view is not None:
            return view
        epoch = self._epoch  # an invalidation during the load leaves what it read uncached

        async def load_and_keep() -> DatasetView:
            loaded = await load()
            self._put(account_id, name, loaded, epoch)
            return loaded

        return await self._loads.do((account_id, name), load_and_keep)

    def _put(self, account_id: int, name: str, view: DatasetView, epoch: int) -> None:
        if self.ttl_s <= 0 or epoch != self._epoch:
            return
        key = (account_id, name)
        self._drop(key)
        self._entries[key] = (view, self._clock() + self.ttl_s)
        self._keys.setdefault(view.dataset_id, set()).add(key)
        while len(self._entries) > self._max:
            self._drop(next(iter(self._entries)))

    def on_broadcast(self, message: DatasetsChanged) -> None:
        if message.origin != self.instance_id:
            self.invalidate(message.dataset_ids)

    def invalidate(self, dataset_ids: Iterable[int]) -> None:
        self._epoch += 1
        for dataset_id in dataset_ids:
            for key in self._keys.pop(dataset_id, set()):
                self._entries.pop(key, None)

    def _drop(self, key: tuple[int, str]) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            keys = self._keys.get(found[0].dataset_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._keys[found[0].dataset_id]

