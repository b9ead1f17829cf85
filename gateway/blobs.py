"""Uploads go to the one blob store client (``shared.bus.blobs.BlobStore``); these two names remain until
the upload route calls it directly."""

from __future__ import annotations

from collections.abc import Iterable

from nats.js import JetStreamContext

from shared.bus.blobs import BlobStore


async def put_blob(js: JetStreamContext, data: bytes) -> str:
    return await BlobStore(js).put(data)


async def delete_blobs(js: JetStreamContext, keys: Iterable[str]) -> None:
    await BlobStore(js).delete(keys)
