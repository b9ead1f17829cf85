"""Reading a JetStream object store's object without a consumer.

nats-py's ``ObjectStore.get`` reads the chunks through an ordered consumer made for that one read, which the
server keeps about 5 s after it (its inactivity threshold); past 1,000 consumers on the stream it refuses more
("maximum consumers limit reached", measured on nats-server 2.15): a service reading more than about 200
objects a second fails its reads. ``read_object`` asks the stream leader for each chunk by subject instead
(``$JS.API.STREAM.MSG.GET``, which every reader of a bucket may call): one request per 128 KiB chunk, and
nothing left behind. It checks the size and the SHA-256 digest the object's metadata records, as ``get`` does.
"""

from __future__ import annotations

import base64
import hashlib

from nats.js import JetStreamContext
from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE, OBJ_DIGEST_TYPE, OBJ_STREAM_TEMPLATE, ObjectStore


class CorruptObjectError(ValueError):
    """The chunks read do not add up to the object the metadata describes."""


async def read_object(js: JetStreamContext, store: ObjectStore, bucket: str, name: str) -> bytes:
    """The object's bytes. Raises what ``get_info`` raises (``ObjectNotFoundError``, the bus's errors),
    ``nats.js.errors.NotFoundError`` when a chunk is missing, and CorruptObjectError on a size or digest
    mismatch."""
    info = await store.get_info(name)
    if not info.size:
        return b""
    stream = OBJ_STREAM_TEMPLATE.format(bucket=bucket)
    subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=bucket, obj=info.nuid)
    data = bytearray()
    seq = 1
    for _ in range(info.chunks or 1):
        # The first message of the object's chunk subject from ``seq`` on (the server's per-subject index).
        msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        data += msg.data or b""
        seq = (msg.seq or seq) + 1
    digest = base64.urlsafe_b64decode((info.digest or "").removeprefix(OBJ_DIGEST_TYPE))
    if len(data) != info.size or hashlib.sha256(data).digest() != digest:
        raise CorruptObjectError(f"object {name} does not match its metadata (size or SHA-256)")
    return bytes(data)
