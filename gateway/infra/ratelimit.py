"""Token buckets in memory, per key. The per-address limit of token lookups uses them as they are (each replica
protects its own share of the database); the per-account limit holds across replicas through
``gateway.infra.sharedrate``, which falls back to these buckets while its store is unreachable."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from shared.errors import RateLimited


class OverRate(RateLimited):
    """RateLimited, with the seconds until its bucket holds a token again (the Retry-After header)."""

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``per_minute`` requests a minute per key on average, bursts of up to ``burst``; 0 disables the limit.
    At most ``max_keys`` buckets are kept (least recently used go first, as full buckets)."""

    def __init__(
        self,
        per_minute: int,
        burst: int,
        *,
        what: str = "this account's rate",
        settings: str = "KASHF_RATE_PER_MINUTE, burst KASHF_RATE_BURST",
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = per_minute / 60.0
        self._capacity = float(max(burst, 1))
        self._per_minute = per_minute
        self._what = what
        self._settings = settings
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()

    def check(self, key: Hashable) -> None:
        """Take one token from the key's bucket or raise OverRate."""
        if self._per_minute <= 0:
            return
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self._capacity, now)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        bucket.tokens = min(self._capacity, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            raise self.refusal((1.0 - bucket.tokens) / self._rate)
        bucket.tokens -= 1.0

    def refusal(self, wait_s: float) -> OverRate:
        """The 429 of this limit, retried after ``wait_s`` (whole seconds, at least 1)."""
        return OverRate(f"over {self._what} of {self._per_minute} requests per minute ({self._settings})",
                        retry_after_s=max(1, math.ceil(wait_s)))
