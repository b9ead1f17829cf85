"""Uploaded bytes in the JetStream object store: messages carry only the key (NATS max payload 1 MiB).

The gateway and the trainer put; vision_service and video_service read; whoever ends the work deletes
(best effort: the bucket's TTL removes what is left behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from shared.bus.objects import CorruptObjectError, read_object
from shared.errors import NotFound, TooLarge, Unavailable
from shared.subjects import BLOBS_BUCKET


class BlobStore:
    """The uploads bucket; ``media`` ("image", "video") and ``size_setting`` only word the errors."""

    def __init__(
        self, js: JetStreamContext, *, media: str = "file", size_setting: str | None = None,
        bucket: str = BLOBS_BUCKET,
    ) -> None:
        self._js = js
        self._media = media
        self._size_setting = size_setting
        self._bucket_name = bucket
        self._store: ObjectStore | None = None

    async def _bucket(self) -> ObjectStore:
        if self._store is None:
            self._store = await self._js.object_store(self._bucket_name)
        return self._store

    async def put(self, data: bytes, *, prefix: str = "upload") -> str:
        """Store ``data`` under a new random key and return the key."""
        key = f"{prefix}-{secrets.token_hex(16)}"
        try:
            await (await self._bucket()).put(key, data)
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise Unavailable("blob store unavailable") from exc
        return key

    async def get(self, key: str, max_bytes: int) -> bytes:
        """The bytes under ``key``; NotFound, TooLarge past ``max_bytes``, Unavailable when the store is."""
        with self._reading():
            store = await self._bucket()
            await self._check_size(store, key, max_bytes)
            # Chunk by chunk without a consumer (shared.bus.objects: get's consumers cap reads near 200 a second)
            return await read_object(self._js, store, self._bucket_name, key)

    async def stream_to_file(self, key: str, dest: Path, max_bytes: int) -> int:
        """Write the bytes under ``key`` into ``dest`` chunk by chunk (never whole in memory); returns the size."""
        with self._reading():
            store = await self._bucket()
            size = await self._check_size(store, key, max_bytes)
            handle = await asyncio.to_thread(dest.open, "wb")
            try:
                await store.get(key, writeinto=handle)
            finally:
                await asyncio.to_thread(handle.close)
        return size

    async def delete(self, keys: Iterable[str]) -> None:
        """Best effort: what a failure leaves behind, the bucket's TTL removes."""
        for key in keys:
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError):
                await (await self._bucket()).delete(key)

    async def _check_size(self, store: ObjectStore, key: str, max_bytes: int) -> int:
        size = (await store.get_info(key)).size or 0
        if size > max_bytes:
            setting = f" ({self._size_setting})" if self._size_setting else ""
            raise TooLarge(f"upload over {max_bytes} bytes{setting}")
        return size

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        try:
            yield
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError):
            raise NotFound(f"uploaded {self._media} not found (uploads expire after an hour)") from None
        except nats.js.errors.BucketNotFoundError:
            raise Unavailable("upload store missing") from None
        except (nats.js.errors.DigestMismatchError, CorruptObjectError):
            raise Unavailable(f"upload store returned a corrupted {self._media}") from None
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise Unavailable("upload store unavailable") from exc
