"""Reading a large object of the JetStream object store chunk by chunk, as an async iterator (an HTTP body).

nats-py's ``ObjectStore.get`` either returns the whole object or writes it into a file from executor threads;
an export zip (~120 MB for text) should be neither held whole nor staged on disk. This reads the object's chunk
subject (``$O.<bucket>.C.<nuid>``, the object-store layout of NATS ADR-20) through an ordered push consumer:
its flow control is answered only as chunks are taken, so a slow reader slows the server down instead of
filling memory. The digest is checked at the end; a mismatch raises (the body is then cut short).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from shared.errors import NotFound, Unavailable
from shared.subjects import BLOBS_BUCKET

_DIGEST = "SHA-256="


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    nuid: str
    digest: str


async def blob_info(js: JetStreamContext, key: str, *, bucket: str = BLOBS_BUCKET) -> BlobInfo:
    """The object's size and chunk id; NotFound when absent, Unavailable when the store is."""
    try:
        info = await (await js.object_store(bucket)).get_info(key)
    except (nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError):
        raise NotFound(f"blob {key} not found (they expire after an hour)") from None
    except (nats.js.errors.BucketNotFoundError, TimeoutError, nats.errors.Error, OSError) as exc:
        raise Unavailable("blob store unavailable") from exc
    return BlobInfo(key=key, size=int(info.size or 0), nuid=info.nuid or "", digest=info.digest or "")


async def read_chunks(js: JetStreamContext, info: BlobInfo, *, bucket: str = BLOBS_BUCKET,
                      chunk_timeout_s: float = 30.0) -> AsyncIterator[bytes]:
    """The object's bytes chunk by chunk (128 KiB each as nats-py writes them); Unavailable on a stall,
    a lost store, or a digest that does not match."""
    if info.size == 0:
        return
    try:
        sub = await js.subscribe(f"$O.{bucket}.C.{info.nuid}", stream=f"OBJ_{bucket}", ordered_consumer=True)
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise Unavailable("blob store unavailable") from exc
    digest = hashlib.sha256()
    received = 0
    try:
        while received < info.size:
            try:
                msg = await sub.next_msg(timeout=chunk_timeout_s)
            except (TimeoutError, nats.errors.Error) as exc:
                raise Unavailable(f"blob store stalled after {received} of {info.size} bytes") from exc
            digest.update(msg.data)
            received += len(msg.data)
            yield msg.data
    finally:
        with contextlib.suppress(TimeoutError, nats.errors.Error, OSError):
            await sub.unsubscribe()
    expected = info.digest.removeprefix(_DIGEST).removeprefix(_DIGEST.lower())
    if received != info.size or digest.digest() != base64.urlsafe_b64decode(expected):
        raise Unavailable("blob store returned a corrupted object")
