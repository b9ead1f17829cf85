"""Kashf's JetStream streams, KV buckets and object stores, declared with the configured number of copies.

``replicas`` is how many servers of a JetStream cluster keep each one (``KASHF_JETSTREAM_REPLICAS``). Given,
it is applied to existing ones too (JetStream scales a stream's copies in place); None keeps what exists and
creates with one, so a process that does not pass the setting never scales a cluster down.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType, StreamConfig
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from shared import subjects

log = structlog.get_logger(__name__)

B = TypeVar("B", ObjectStore, KeyValue)

_EXISTS = 10058  # JetStream: "stream name already in use with a different configuration"


class JetStreamSetupError(RuntimeError):
    """JetStream refused a declaration (e.g. more replicas than the cluster has servers)."""


def events_config(replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=subjects.EVENTS_STREAM, subjects=subjects.EVENTS_SUBJECTS, storage=StorageType.FILE,
        duplicate_window=600.0, num_replicas=replicas,
    )


def webhooks_config(replicas: int = 1) -> StreamConfig:
    """Webhook deliveries; only the trainer declares it (``ensure_streams`` is for what every process uses)."""
    return StreamConfig(
        name=subjects.WEBHOOKS_STREAM, subjects=[subjects.WEBHOOKS_SUBJECT], storage=StorageType.FILE,
        max_age=subjects.WEBHOOKS_MAX_AGE_S, duplicate_window=600.0, num_replicas=replicas,
    )


def heads_config(replicas: int = 1) -> ObjectStoreConfig:
    return ObjectStoreConfig(bucket=subjects.HEADS_BUCKET, storage=StorageType.FILE, replicas=replicas)


def blobs_config(replicas: int = 1) -> ObjectStoreConfig:
    return ObjectStoreConfig(bucket=subjects.BLOBS_BUCKET, ttl=subjects.BLOBS_TTL_S, storage=StorageType.FILE,
                             replicas=replicas)


def rate_config(replicas: int = 1) -> KeyValueConfig:
    """The gateways' shared rate-limit state: small, rewritten often and cheap to lose (buckets refill)."""
    return KeyValueConfig(bucket=subjects.RATE_BUCKET, history=1, ttl=subjects.RATE_KEY_TTL_S,
                          storage=StorageType.MEMORY, replicas=replicas)


async def ensure_streams(js: JetStreamContext, *, replicas: int | None = None) -> None:
    """Declare the events stream and the heads and uploads object stores; safe to call from every process."""
    await declare_stream(js, events_config(), replicas)
    await declare_object_store(js, heads_config(), replicas)
    await declare_object_store(js, blobs_config(), replicas)


async def declare_stream(js: JetStreamContext, config: StreamConfig, replicas: int | None) -> None:
    """Create the stream, or update an existing one to ``config`` (its replicas kept when ``replicas`` is None)."""
    assert config.name is not None
    with _refused(config.name, replicas):
        try:
            await js.add_stream(_with_replicas(config, replicas or 1))
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != _EXISTS:
                raise
            kept = replicas or (await js.stream_info(config.name)).config.num_replicas or 1
            await js.update_stream(_with_replicas(config, kept))


async def declare_object_store(js: JetStreamContext, config: ObjectStoreConfig, replicas: int | None) -> ObjectStore:
    """Create the bucket, or use the existing one (its settings kept, but its copies set to ``replicas``)."""
    bucket = config.bucket
    assert bucket is not None
    return await _declare_bucket(
        js, bucket, f"OBJ_{bucket}", replicas,
        lambda: js.create_object_store(bucket, config=dataclasses.replace(config, replicas=replicas or 1)),
        lambda: js.object_store(bucket),
    )


async def declare_key_value(js: JetStreamContext, config: KeyValueConfig, replicas: int | None) -> KeyValue:
    """Create the bucket, or use the existing one (its settings kept, but its copies set to ``replicas``)."""
    return await _declare_bucket(
        js, config.bucket, f"KV_{config.bucket}", replicas,
        lambda: js.create_key_value(dataclasses.replace(config, replicas=replicas or 1)),
        lambda: js.key_value(config.bucket),
    )


async def _declare_bucket(js: JetStreamContext, bucket: str, stream: str, replicas: int | None,
                          create: Callable[[], Awaitable[B]], existing: Callable[[], Awaitable[B]]) -> B:
    """A KV or object-store bucket (a stream underneath): created, or the existing one scaled and opened."""
    with _refused(bucket, replicas):
        try:
            return await create()
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != _EXISTS:
                raise
        await set_replicas(js, stream, replicas)
        return await existing()


async def set_replicas(js: JetStreamContext, stream: str, replicas: int | None) -> None:
    """Scale an existing stream (a KV or object-store bucket is one) to ``replicas`` copies; None: leave it."""
    if replicas is None:
        return
    info = await js.stream_info(stream)
    if info.config.num_replicas != replicas:
        await js.update_stream(dataclasses.replace(info.config, num_replicas=replicas))
        log.info("stream_replicas_changed", stream=stream, replicas=replicas, was=info.config.num_replicas)


def _with_replicas(config: StreamConfig, replicas: int) -> StreamConfig:
    return dataclasses.replace(config, num_replicas=replicas)


@contextlib.contextmanager
def _refused(name: str, replicas: int | None) -> Iterator[None]:
    """JetStream's refusal of a declaration becomes JetStreamSetupError naming the stream and the setting; the
    bus being away (timeouts, unavailable) passes through unchanged."""
    try:
        yield
    except (nats.js.errors.BadRequestError, nats.js.errors.ServerError) as exc:
        raise JetStreamSetupError(
            f"JetStream refused {name} with replicas={replicas or 1} (KASHF_JETSTREAM_REPLICAS): "
            f"{exc.description or type(exc).__name__}") from exc

