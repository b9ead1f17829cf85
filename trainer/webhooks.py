"""Webhook deliveries of training events: POSTed signed under the image fetch rules, retried.

The trainer writes one pending ``webhook_delivery`` row per subscribed webhook in the transaction that commits
what the event says, then publishes a message per row to ``KASHF_WEBHOOKS`` (``trainer.webhook_events``).
``WebhookWorker`` pulls them: it locks the row, sends only a pending one that is due (so a delivered event is
never sent again, whatever the redeliveries), records the attempt, and has a failed one delivered again by the
pull worker's doubling delay until ``retry_for_s`` after the event. Its sweep republishes overdue pending rows."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import importlib.metadata
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelkit.fetch import Fetcher, FetchPolicy, policy_from_settings
from shared import subjects
from shared.bus import Bus
from shared.bus.pull import Delivery, PullConfig, PullWorker
from shared.bus.streams import declare_stream, webhooks_config
from shared.errors import BadRequest, KashfError, Unavailable
from shared.settings import TrainerSettings
from trainer import webhook_repository as repo
from trainer.consumers import is_transient
from trainer.webhook_events import WebhookDue, publish
from trainer.webhook_repository import Due

log = structlog.get_logger(__name__)

PAYLOAD_KEYS = ("event", "dataset", "version", "state", "evaluation", "at")
SIGNATURE_HEADER = "Kashf-Signature"


def _version() -> str:
    try:
        return importlib.metadata.version("kashf")
    except importlib.metadata.PackageNotFoundError:
        return "0"


USER_AGENT = f"Kashf-Webhooks/{_version()}"


@dataclass(frozen=True)
class WebhookMetrics:
    deliveries: Counter  # labels: outcome (delivered, retry, failed, dropped)


def create_webhook_metrics(registry: CollectorRegistry) -> WebhookMetrics:
    return WebhookMetrics(Counter(
        "kashf_webhook_deliveries", "Webhook delivery attempts and ends by outcome: delivered, retry (an attempt "
        "failed, another follows), failed (given up or refused by the fetch rules), dropped (webhook deleted)",
        ["outcome"], registry=registry,
    ))


@functools.cache
def default_webhook_metrics() -> WebhookMetrics:
    return create_webhook_metrics(REGISTRY)


def body_bytes(payload: Mapping[str, Any]) -> bytes:
    """The JSON body as sent and signed: compact, keys in the documented order."""
    ordered = {key: payload.get(key) for key in PAYLOAD_KEYS}
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass(frozen=True)
class RetryPolicy:
    """After attempt n fails the next is due ``delay_s * 2**(n-1)`` later (at most ``max_delay_s``), until
    ``retry_for_s`` after the event."""

    delay_s: float = 10.0
    max_delay_s: float = 3600.0
    retry_for_s: float = 86_400.0

    def backoff(self, attempts: int) -> float:
        return float(min(self.delay_s * 2 ** max(attempts - 1, 0), self.max_delay_s))


class RetryLater(Unavailable):
    """The attempt failed (or the delivery is not due yet): the pull worker naks it with its doubling delay."""

    code = "webhook_retry"


@dataclass(frozen=True)
class WebhookConfig:
    retry: RetryPolicy
    timeout_s: float = 10.0
    concurrency: int = 4
    sweep_s: float = 60.0
    ack_wait_s: float = 30.0
    durable: str = subjects.WEBHOOKS_DURABLE


class WebhookWorker:
    """The durable pull consumer of deliveries, and the sweep of those whose message went missing."""

    def __init__(self, bus: Bus, sessions: async_sessionmaker[AsyncSession], policy: FetchPolicy,
                 config: WebhookConfig, *, replicas: int | None = None, metrics: WebhookMetrics | None = None
                 ) -> None:
        self.bus = bus
        self.sessions = sessions
        self.config = config
        self.replicas = replicas
        self.metrics = metrics or default_webhook_metrics()
        timeout = config.timeout_s
        self.fetcher = Fetcher(FetchPolicy(
            allow_hosts=policy.allow_hosts, allowed_ports=policy.allowed_ports, user_agent=USER_AGENT,
            connect_timeout=min(policy.connect_timeout, timeout), read_timeout=timeout, total_timeout=timeout,
        ))
        retry = config.retry
        self.worker = PullWorker(bus.nc, PullConfig(
            stream=subjects.WEBHOOKS_STREAM, durable=config.durable, subjects=(subjects.WEBHOOKS_SUBJECT,),
            ack_wait_s=config.ack_wait_s, max_deliver=1000, retry_delay_s=retry.delay_s,
            max_retry_delay_s=retry.max_delay_s, batch=config.concurrency, concurrency=config.concurrency,
            is_transient=is_transient,
        ), self._handle)
        self._sweeper: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: TrainerSettings, bus: Bus,
                      sessions: async_sessionmaker[AsyncSession]) -> WebhookWorker:
        retry = RetryPolicy(settings.webhook_retry_delay_s, settings.webhook_retry_max_delay_s,
                            settings.webhook_retry_for_s)
        config = WebhookConfig(retry, timeout_s=settings.webhook_timeout_s, concurrency=settings.webhook_concurrency,
                               sweep_s=settings.webhook_sweep_s)
        policy = policy_from_settings(settings.fetch_allow_hosts, settings.fetch_allow_ports)
        return cls(bus, sessions, policy, config, replicas=settings.jetstream_replicas)

    @property
    def running(self) -> bool:
        return self.worker.running

    async def start(self) -> None:
        await declare_stream(self.bus.js, webhooks_config(), self.replicas)
        await self.worker.start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="webhook-sweep")

    async def stop(self, timeout_s: float = 10.0) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.worker.stop(timeout_s)
        await self.fetcher.aclose()

    async def sweep(self) -> int:
        """Publish again the pending deliveries overdue by a sweep period; how many."""
        retry = self.config.retry
        async with self.sessions() as session:
            late = await repo.overdue(session, delay_s=retry.delay_s, max_delay_s=retry.max_delay_s,
                                      grace_s=self.config.sweep_s)
        sent = await publish(self.bus, late)
        if sent:
            log.info("webhook_swept", published=sent)
        return sent

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_s)
            try:
                await self.sweep()
            except Exception as exc:  # the database or the bus away: the next pass tries again
                log.warning("webhook_sweep_failed", error=f"{type(exc).__name__}: {exc}"[:300])

    async def _handle(self, delivery: Delivery) -> None:
        delivery_id = WebhookDue.model_validate_json(delivery.msg.data).delivery_id
        retry_in: float | None = None
        # The row stays locked while it is sent: a copy of its message (republished, redelivered) waits.
        async with self.sessions.begin() as session:
            due = await repo.lock_delivery(session, delivery_id)
            if due is None:
                if await repo.delivery_exists(session, delivery_id):
                    raise RetryLater("another worker is sending this delivery")
                self.metrics.deliveries.labels(outcome="dropped").inc()
                log.info("webhook_dropped", delivery_id=delivery_id, reason="webhook deleted")
                return
            if due.state != "pending":
                return  # delivered or given up: never sent again
            retry_in = await self._attempt(session, due)
        if retry_in is not None:
            raise RetryLater(f"delivery {delivery_id} retried in about {retry_in:g} s")

    async def _attempt(self, session: AsyncSession, due: Due) -> float | None:
        """Send ``due`` unless not due yet; record the outcome. Seconds until the next try, or None when done."""
        retry = self.config.retry
        deadline = due.created_at + timedelta(seconds=retry.retry_for_s)
        fields = {"webhook_id": due.webhook_id, "delivery_id": due.id, "event_name": due.event}
        if due.now >= deadline:
            await self._give_up(session, due, due.attempts, due.last_status, due.last_error, fields)
            return None
        if due.attempts:
            not_before = due.updated_at + timedelta(seconds=retry.backoff(due.attempts))
            if due.now < not_before - timedelta(seconds=1):
                return (not_before - due.now).total_seconds()  # a copy of the message, early
        attempt = due.attempts + 1
        body = body_bytes(due.payload)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(due.secret, int(time.time()), body),
                   "Kashf-Event": due.event, "Kashf-Delivery": str(due.id)}
        status: int | None = None
        try:
            status = await self.fetcher.post(due.url, body, headers)
        except BadRequest as exc:
            # The fetch rules refuse the URL (nothing was connected to): no retry makes it allowed.
            await self._fail(session, due, attempt, None, f"refused: {exc.detail}", fields)
            return None
        except KashfError as exc:
            error = exc.detail
        else:
            if 200 <= status < 300:
                await repo.record_attempt(session, due.id, state="delivered", attempts=attempt, status=status,
                                          error=None)
                self.metrics.deliveries.labels(outcome="delivered").inc()
                log.info("webhook_delivered", status=status, attempt=attempt, **fields)
                return None
            error = f"http status {status}"
        wait = retry.backoff(attempt)
        if due.now + timedelta(seconds=wait) >= deadline:
            await self._give_up(session, due, attempt, status, error, fields)
            return None
        await repo.record_attempt(session, due.id, state="pending", attempts=attempt, status=status, error=error)
        self.metrics.deliveries.labels(outcome="retry").inc()
        log.warning("webhook_retry", status=status, attempt=attempt, error=error, retry_in_s=wait, **fields)
        return wait

    async def _give_up(self, session: AsyncSession, due: Due, attempts: int, status: int | None, error: str | None,
                       fields: Mapping[str, Any]) -> None:
        """No attempt after ``retry_for_s`` past the event: the last answer is kept, with why it stopped."""
        window = self.config.retry.retry_for_s
        error = (f"{error or 'no attempt'}; gave up after {attempts} attempts in {window:g} s"
                 " (KASHF_WEBHOOK_RETRY_FOR_S)")
        await self._fail(session, due, attempts, status, error, fields)

    async def _fail(self, session: AsyncSession, due: Due, attempts: int, status: int | None, error: str,
                    fields: Mapping[str, Any]) -> None:
        await repo.record_attempt(session, due.id, state="failed", attempts=attempts, status=status, error=error)
        self.metrics.deliveries.labels(outcome="failed").inc()
        log.warning("webhook_failed", status=status, attempt=attempts, error=error, **fields)
