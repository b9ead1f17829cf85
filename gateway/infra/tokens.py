"""Short-lived caches of token hash -> account, so a request does not need a database round trip to
authenticate: found tokens for ``ttl_s`` (a revoked token stops working on each replica within that time),
unknown ones for ``unknown_ttl_s`` (a flood repeating a wrong token costs one lookup per that time)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from gateway.infra.singleflight import SingleFlight


class TokenCache:
    def __init__(
        self,
        ttl_s: float,
        unknown_ttl_s: float = 0.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._unknown_ttl_s = unknown_ttl_s
        self._max = max_entries
        self._clock = clock
        # Found tokens stay after their TTL (LRU-bounded), so a refresh of a known token can be told from a guess.
        self._found: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._loads: SingleFlight[str, int | None] = SingleFlight()

    async def get_or_load(self, token_hash: str, load: Callable[[], Awaitable[int | None]]) -> int | None:
        """The cached account, or ``load()``'s (cached either way); concurrent misses share one load."""
        cached = self.get(token_hash)
        if cached is not None or self.known_unknown(token_hash):
            return cached

        async def load_and_keep() -> int | None:
            account_id = await load()
            if account_id is None:
                self._found.pop(token_hash, None)  # revoked
                self._put_unknown(token_hash)
            else:
                self.put(token_hash, account_id)
            return account_id

        return await self._loads.do(token_hash, load_and_keep)

    def get(self, token_hash: str) -> int | None:
        """The account of a token found less than ``ttl_s`` ago."""
        found = self._found.get(token_hash)
        if found is None or self._clock() >= found[1]:
            return None
        return found[0]

    def was_found(self, token_hash: str) -> bool:
        """Whether this replica found the token once (it may need a new lookup now)."""
        return token_hash in self._found

    def known_unknown(self, token_hash: str) -> bool:
        """Whether a lookup of the token found nothing less than ``unknown_ttl_s`` ago."""
        expires = self._unknown.get(token_hash)
        if expires is None:
            return False
        if self._clock() >= expires:
            del self._unknown[token_hash]
            return False
        return True

    def put(self, token_hash: str, account_id: int) -> None:
        # Kept even with ttl_s <= 0 (then already expired): it still marks the token as found once.
        self._found[token_hash] = (account_id, self._clock() + self._ttl_s)
        self._found.move_to_end(token_hash)
        while len(self._found) > self._max:
            self._found.popitem(last=False)

    def _put_unknown(self, token_hash: str) -> None:
        if self._unknown_ttl_s <= 0:
            return
        self._unknown[token_hash] = self._clock() + self._unknown_ttl_s
        self._unknown.move_to_end(token_hash)
        while len(self._unknown) > self._max:
            self._unknown.popitem(last=False)
