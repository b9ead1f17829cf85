"""The per-account rate limit held across gateway replicas: one token bucket per account in a JetStream KV
bucket (``kashf-rate``), from which each replica leases tokens in slices and serves them from memory.

- The KV bucket is the only source of tokens. A key (``a<account>.<per_minute>.<burst>``) names the limit it
  counts against: gateways configured with different limits on one NATS (a rate change rolling out, a second
  gateway with its own limit) each keep their own buckets instead of reading another limit's tokens as theirs.
  A key's value is ``"<tokens> <at>"`` (``at`` in wall-clock seconds); a replica refills it by the time
  passed, takes a slice and writes it back expecting the revision it read (optimistic concurrency: a conflict
  reads again and retries). So over any window all replicas
  together admit at most the burst plus the rate times the window, plus what their leases still hold
  (at most ``max_slice`` per replica and account).
- A whole slice is leased while the bucket stays more than half full after it (an account far below its
  limit pays one KV round trip per slice); nearer the limit only as many tokens as requests are waiting, so
  no replica sits on tokens another needs. A lease unused for ``lease_s`` is dropped.
- A replica remembers when an empty bucket gets its next token: the 429s before then cost no round trip.
- While the store is unreachable (disconnected, an error, slower than ``timeout_s``) the replica's own
  bucket (``RateLimiter``) decides, for ``retry_s`` at a time, logged once per outage: requests never fail
  because the limiter's store is down (the limit then holds per replica, as before this module).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from gateway.infra.ratelimit import RateLimiter

log = structlog.get_logger(__name__)

_STORE_ERRORS = (nats.errors.Error, TimeoutError, OSError)


@dataclass
class _Seen:
    """The bucket as this replica last read or wrote it."""

    tokens: float
    at: float
    revision: int


@dataclass
class _Lease:
    tokens: int = 0
    expires: float = 0.0
    denied_until: float = 0.0  # the shared bucket holds no whole token before then
    waiting: int = 0  # requests queued behind the one refilling this lease
    seen: _Seen | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _Contended(Exception):
    """Other replicas changed the key at every attempt."""


class SharedRateLimiter:
    """``per_minute`` requests a minute per account on average, bursts of ``burst``, over every replica that
    shares ``kv``; 0 disables the limit. ``local`` decides while the store is away and words the 429."""

    def __init__(
        self,
        kv: KeyValue,
        connected: Callable[[], bool],
        per_minute: int,
        burst: int,
        *,
        local: RateLimiter,
        lease_s: float = 10.0,
        timeout_s: float = 0.5,
        retry_s: float = 5.0,
        attempts: int = 8,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kv = kv
        self._connected = connected
        self._per_minute = per_minute
        self._rate = per_minute / 60.0
        self._capacity = float(max(burst, 1))
        # A slice is at most a quarter of the burst and a second of the rate.
        self.max_slice = max(1, min(int(self._capacity) // 4, math.ceil(self._rate)))
        self._local = local
        self._lease_s, self._timeout_s, self._retry_s = lease_s, timeout_s, retry_s
        self._attempts = attempts
        self._max_keys = max_keys
        self._clock = clock
        self._key_suffix = f".{per_minute}.{max(burst, 1)}"
        self._leases: OrderedDict[int, _Lease] = OrderedDict()
        self._down_until = 0.0
        self._down = False

    async def check(self, account_id: int) -> None:
        """Admit one request of the account or raise OverRate (429 with Retry-After)."""
        if self._per_minute <= 0:
            return
        if not self._store_usable():
            self._local.check(account_id)
            return
        lease = self._lease(account_id)
        if self._admitted(lease):
            return
        lease.waiting += 1
        try:
            await lease.lock.acquire()
        finally:
            lease.waiting -= 1
        try:
            if self._admitted(lease):  # refilled while this request waited
                return
            if not self._store_usable():  # it failed for the request this one waited behind
                self._local.check(account_id)
                return
            now = self._clock()
            try:
                async with asyncio.timeout(self._timeout_s):
                    granted, wait_s = await self._take(account_id, lease, 1 + lease.waiting, now)
            except _Contended:
                log.info("rate_limit_store_contended", account_id=account_id)
                self._local.check(account_id)
                return
            except _STORE_ERRORS as exc:
                self._went_down(type(exc).__name__)
                self._local.check(account_id)
                return
            self._came_back()
            if granted == 0:
                lease.denied_until = now + wait_s
                raise self._local.refusal(wait_s)
            lease.tokens, lease.expires = granted - 1, now + self._lease_s
        finally:
            lease.lock.release()

    def _admitted(self, lease: _Lease) -> bool:
        """Take a leased token; OverRate while the shared bucket is known to be empty; False: ask the store."""
        now = self._clock()
        if lease.tokens > 0 and now < lease.expires:
            lease.tokens -= 1
            return True
        if now < lease.denied_until:
            raise self._local.refusal(lease.denied_until - now)
        return False

    async def _take(self, account_id: int, lease: _Lease, want: int, now: float) -> tuple[int, float]:
        """(tokens leased, 0) or (0, seconds until the bucket holds a whole token)."""
        key = self.key(account_id)
        seen = lease.seen
        for attempt in range(1, self._attempts + 1):
            if seen is None:
                seen = await self._read(key, now)
            # Another replica's writes since ``seen`` only took tokens: this is an upper bound of what is left,
            # so a refusal computed from it is right without a read.
            tokens = min(self._capacity, seen.tokens + max(0.0, now - seen.at) * self._rate)
            if tokens < 1.0:
                lease.seen = seen
                return 0, (1.0 - tokens) / self._rate
            taken = self._slice(tokens, want)
            left = tokens - taken
            try:
                revision = await self._kv.update(key, f"{left!r} {now!r}".encode(), last=seen.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                seen = None  # someone wrote it since: read it again (after a second conflict, a jittered
                if attempt > 1:  # pause first, so one busy replica cannot starve another)
                    await asyncio.sleep(random.uniform(0.0, 0.001 * attempt))
                continue
            lease.seen = _Seen(left, now, revision)
            return taken, 0.0
        lease.seen = None
        raise _Contended

    def key(self, account_id: int) -> str:
        """The account's bucket under this limiter's limit."""
        return f"a{account_id}{self._key_suffix}"

    def _slice(self, tokens: float, want: int) -> int:
        rich = tokens - self.max_slice >= self._capacity / 2
        return max(1, min(self.max_slice if rich else want, self.max_slice, math.floor(tokens)))

    async def _read(self, key: str, now: float) -> _Seen:
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError as exc:
            # Never written, or idle past the bucket's TTL: a full bucket (a delete marker keeps its revision).
            marker = getattr(exc, "entry", None)
            revision = marker.revision if marker is not None and marker.revision else 0
            return _Seen(self._capacity, now, revision)
        try:
            tokens, at = (float(part) for part in (entry.value or b"").decode().split())
        except ValueError:
            return _Seen(self._capacity, now, entry.revision or 0)
        return _Seen(tokens, at, entry.revision or 0)

    def _lease(self, account_id: int) -> _Lease:
        lease = self._leases.get(account_id)
        if lease is None:
            lease = self._leases[account_id] = _Lease()
            if len(self._leases) > self._max_keys:
                self._leases.popitem(last=False)
        else:
            self._leases.move_to_end(account_id)
        return lease

    def _store_usable(self) -> bool:
        if not self._connected():
            self._went_down("disconnected")
            return False
        return self._clock() >= self._down_until

    def _went_down(self, reason: str) -> None:
        self._down_until = self._clock() + self._retry_s
        if not self._down:
            self._down = True
            log.warning("rate_limit_store_unavailable", reason=reason, fallback="this replica's own buckets",
                        retry_s=self._retry_s)

    def _came_back(self) -> None:
        if self._down:
            self._down = False
            log.info("rate_limit_store_back")
