"""Uploaded bytes go to the JetStream object store; messages carry only the key (NATS max payload 1 MiB)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterable

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from shared.errors import Unavailable
from shared.subjects import BLOBS_BUCKET


async def put_blob(js: JetStreamContext, data: bytes) -> str:
    """Store ``data`` under a new random key (the bucket's TTL removes what is left behind)."""
    key = f"upload-{secrets.token_hex(16)}"
    try:
        store = await js.object_store(BLOBS_BUCKET)
        await store.put(key, data)
    except (nats.errors.Error, TimeoutError, OSError) as exc:
        raise Unavailable("blob store unavailable") from exc
    return key


async def delete_blobs(js: JetStreamContext, keys: Iterable[str]) -> None:
    """Best effort: the bucket's TTL is the fallback."""
    with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError):
        store = await js.object_store(BLOBS_BUCKET)
        for key in keys:
            await store.delete(key)
