"""The one upload store client against a real nats-server object store."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from shared.bus import Bus
from shared.bus.blobs import BlobStore
from shared.errors import NotFound, TooLarge, Unavailable
from shared.subjects import BLOBS_BUCKET


async def test_put_get_delete(bus: Bus) -> None:
    blobs = BlobStore(bus.js, media="image", size_setting="KASHF_MAX_IMAGE_BYTES")
    data = os.urandom(1000)
    key = await blobs.put(data, prefix="trainer")
    other = await blobs.put(b"other")
    assert key.startswith("trainer-") and other.startswith("upload-") and key != other
    # Another client (another process in production) reads what this one put.
    assert await BlobStore(bus.js).get(key, max_bytes=1000) == data
    with pytest.raises(TooLarge, match=r"upload over 999 bytes \(KASHF_MAX_IMAGE_BYTES\)"):
        await blobs.get(key, max_bytes=999)
    await blobs.delete(["never-put", key, other])  # a missing key does not stop the others
    for gone in (key, other):
        with pytest.raises(NotFound, match="uploaded image not found"):
            await blobs.get(gone, max_bytes=1000)


async def test_stream_to_file_writes_large_uploads_in_chunks(bus: Bus, tmp_path: Path) -> None:
    blobs = BlobStore(bus.js, media="video")
    data = os.urandom(700_000)  # several object-store chunks
    key = await blobs.put(data)
    dest = tmp_path / "video.mp4"
    assert await blobs.stream_to_file(key, dest, max_bytes=len(data)) == len(data)
    assert dest.read_bytes() == data
    with pytest.raises(TooLarge):
        await blobs.stream_to_file(key, tmp_path / "small", max_bytes=len(data) - 1)
    assert not (tmp_path / "small").exists()  # refused before a byte is written
    with pytest.raises(NotFound, match="uploaded video not found"):
        await blobs.stream_to_file("never-put", tmp_path / "missing", max_bytes=10)


async def test_a_missing_bucket_is_unavailable(bus: Bus) -> None:
    blobs = BlobStore(bus.js, bucket=f"missing-{secrets.token_hex(4)}")
    with pytest.raises(Unavailable):
        await blobs.put(b"x")
    with pytest.raises(Unavailable, match="upload store missing"):
        await blobs.get("any", max_bytes=10)
    await blobs.delete(["any"])  # best effort: no error


async def test_gets_read_every_chunk_and_leave_no_consumer_behind(bus: Bus) -> None:
    """An object store ``get`` leaves a consumer for about 5 s and the server refuses past 1,000 (reads failed
    near 200 a second): uploads are read chunk by chunk without one, as heads are (shared.bus.objects)."""
    blobs = BlobStore(bus.js)
    data = os.urandom(300_000)  # three 128 KiB chunks
    key = await blobs.put(data)
    before = (await bus.js.stream_info(f"OBJ_{BLOBS_BUCKET}")).state.consumer_count  # the other tests' reads
    for _ in range(20):
        assert await blobs.get(key, max_bytes=len(data)) == data
    assert (await bus.js.stream_info(f"OBJ_{BLOBS_BUCKET}")).state.consumer_count <= before
