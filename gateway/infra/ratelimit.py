"""Per-account token bucket, in memory. Each gateway process keeps its own buckets, so with N replicas an
account may reach up to N times the configured rate; that is accepted (no shared store on the request path)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.errors import RateLimited


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``per_minute`` requests a minute on average, bursts of up to ``burst``; 0 disables the limit."""

    def __init__(self, per_minute: int, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_minute / 60.0
        self._capacity = float(max(burst, 1))
        self._per_minute = per_minute
        self._clock = clock
        self._buckets: dict[int, _Bucket] = {}

    def check(self, account_id: int) -> None:
        """Take one token for the account or raise RateLimited."""
        if self._per_minute <= 0:
            return
        now = self._clock()
        bucket = self._buckets.get(account_id)
        if bucket is None:
            bucket = self._buckets[account_id] = _Bucket(self._capacity, now)
        bucket.tokens = min(self._capacity, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            raise RateLimited(
                f"over this account's rate of {self._per_minute} requests per minute "
                f"(KASHF_RATE_PER_MINUTE, burst KASHF_RATE_BURST)"
            )
        bucket.tokens -= 1.0

    def retry_after_s(self) -> int:
        """Seconds until one token is back, rounded up."""
        return max(1, int(1.0 / self._rate + 0.999)) if self._rate > 0 else 1
