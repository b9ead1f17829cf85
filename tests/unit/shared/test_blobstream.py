"""Large objects read chunk by chunk (export zips): whole and in order, never far ahead of a slow reader."""

from __future__ import annotations

import asyncio
import os

import pytest

from shared.bus import Bus
from shared.bus.blobs import BlobStore
from shared.bus.blobstream import blob_info, read_chunks
from shared.errors import NotFound


async def test_an_object_comes_back_whole_in_chunks(bus: Bus) -> None:
    data = os.urandom(3_000_000)
    key = await BlobStore(bus.js).put(data, prefix="export")
    info = await blob_info(bus.js, key)
    assert info.size == len(data)
    chunks = [chunk async for chunk in read_chunks(bus.js, info)]
    assert len(chunks) > 10 and max(map(len, chunks)) <= 128 * 1024
    assert b"".join(chunks) == data
    empty = await blob_info(bus.js, await BlobStore(bus.js).put(b""))
    assert [chunk async for chunk in read_chunks(bus.js, empty)] == []
    with pytest.raises(NotFound):
        await blob_info(bus.js, "never-put")


async def test_a_slow_reader_is_not_flooded(bus: Bus) -> None:
    """Flow control is answered only as chunks are taken: while the reader waits, the server stops sending."""
    data = os.urandom(40_000_000)
    key = await BlobStore(bus.js).put(data, prefix="export")
    info = await blob_info(bus.js, key)
    chunks = read_chunks(bus.js, info)
    first = await anext(chunks)
    before = bus.nc.stats["in_bytes"]
    await asyncio.sleep(1.5)
    ahead = bus.nc.stats["in_bytes"] - before
    rest = b"".join([chunk async for chunk in chunks])
    assert first + rest == data
    print(f"bytes received ahead of a paused reader: {ahead}")
    assert ahead < 8_000_000, ahead  # of 40 MB (measured: about 2 MB)
    await BlobStore(bus.js).delete([key])
