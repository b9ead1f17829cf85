"""A short-lived cache of token hash -> account, so a request does not need a database round trip
to authenticate. A revoked token stops working on each gateway replica within ``ttl_s``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from gateway.infra.singleflight import SingleFlight


class TokenCache:
    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._entries: dict[str, tuple[int, float]] = {}
        self._loads: SingleFlight[str, int | None] = SingleFlight()

    async def get_or_load(self, token_hash: str, load: Callable[[], Awaitable[int | None]]) -> int | None:
        """The cached account, or ``load()``'s (cached when found); concurrent misses share one load."""
        cached = self.get(token_hash)
        if cached is not None:
            return cached

        async def load_and_keep() -> int | None:
            account_id = await load()
            if account_id is not None:
                self.put(token_hash, account_id)
            return account_id

        return await self._loads.do(token_hash, load_and_keep)

    def get(self, token_hash: str) -> int | None:
        found = self._entries.get(token_hash)
        if found is None:
            return None
        account_id, expires = found
        if time.monotonic() >= expires:
            del self._entries[token_hash]
            return None
        return account_id

    def put(self, token_hash: str, account_id: int) -> None:
        if self._ttl_s <= 0:
            return
        if len(self._entries) >= self._max:
            self._entries.clear()  # rare; every entry is cheap to refetch
        self._entries[token_hash] = (account_id, time.monotonic() + self._ttl_s)
