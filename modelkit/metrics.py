"""Prometheus metrics every process shares, registered once per registry on first use."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel

from shared.errors import KashfError

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TRAIN_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

Req = TypeVar("Req", bound=BaseModel)


@dataclass(frozen=True)
class Metrics:
    """The shared families; label values name the subject, batcher or outcome."""

    requests: Counter  # labels: subject, outcome ("ok" or an error code)
    request_seconds: Histogram  # labels: subject
    batch_size: Histogram  # labels: batcher
    queue_depth: Gauge  # labels: batcher
    model_seconds: Histogram  # labels: batcher
    training_runs: Counter  # labels: outcome
    training_seconds: Histogram
    head_loads: Counter  # heads read from the object store: HeadCache misses
    ready: Gauge  # 1 when /readyz answers 200


def create_metrics(registry: CollectorRegistry) -> Metrics:
    """Register the families in ``registry`` (tests pass a fresh one)."""
    return Metrics(
        requests=Counter("kashf_requests", "Bus requests handled", ["subject", "outcome"], registry=registry),
        request_seconds=Histogram(
            "kashf_request_seconds", "Time to answer a bus request", ["subject"],
            buckets=_LATENCY_BUCKETS, registry=registry,
        ),
        batch_size=Histogram(
            "kashf_batch_size", "Items per model call", ["batcher"], buckets=_BATCH_BUCKETS, registry=registry
        ),
        queue_depth=Gauge(
            "kashf_queue_depth", "Items waiting for a model call", ["batcher"], registry=registry
        ),
        model_seconds=Histogram(
            "kashf_model_seconds", "Time inside one model call", ["batcher"],
            buckets=_LATENCY_BUCKETS, registry=registry,
        ),
        training_runs=Counter("kashf_training_runs", "Head fits by outcome", ["outcome"], registry=registry),
        training_seconds=Histogram(
            "kashf_training_seconds", "Time to fit and evaluate one head", buckets=_TRAIN_BUCKETS,
            registry=registry,
        ),
        head_loads=Counter("kashf_head_loads", "Heads read from the object store (cache misses)",
                           registry=registry),
        ready=Gauge("kashf_ready", "1 when the process is ready to serve", registry=registry),
    )


@functools.cache
def default_metrics() -> Metrics:
    """The process-wide families in prometheus_client's default registry (what /metrics serves)."""
    return create_metrics(REGISTRY)


def instrumented(
    subject: str, handler: Callable[[Req], Awaitable[BaseModel]], metrics: Metrics | None = None
) -> Callable[[Req], Awaitable[BaseModel]]:
    """Wrap a bus handler so each request is counted by outcome and timed."""
    m = metrics or default_metrics()
    seconds = m.request_seconds.labels(subject=subject)

    async def wrapper(request: Req) -> BaseModel:
        start = time.perf_counter()
        outcome = "ok"
        try:
            return await handler(request)
        except KashfError as exc:
            outcome = exc.error_code
            raise
        except Exception:
            outcome = "internal"
            raise
        finally:
            seconds.observe(time.perf_counter() - start)
            m.requests.labels(subject=subject, outcome=outcome).inc()

    return wrapper
