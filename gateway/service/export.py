"""export_dataset: the dataset's model service builds the zip of its tagger and puts it in the blobs bucket;
the gateway streams it to the client chunk by chunk (never whole in memory) and deletes it after."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

import structlog

from gateway.service.datasets import load_dataset
from gateway.state import AppState
from gateway.uow import UnitOfWork
from shared.bus.blobs import BlobStore
from shared.bus.blobstream import BlobInfo, blob_info, read_chunks
from shared.errors import BadRequest, NotFound, Unavailable
from shared.schemas.export import ExportReply, ExportRequest, ExportTag
from shared.schemas.inference import HeadRef
from shared.subjects import TEXT_EXPORT, VISION_EXPORT

log = structlog.get_logger(__name__)

_DELETE_S = 10.0  # the longest a finished or abandoned download's zip deletion may take
_DELETIONS: set[asyncio.Future[None]] = set()  # running deletions (the loop holds tasks weakly)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class ExportedZip:
    """A built package waiting in the blobs bucket; ``chunks()`` streams it and deletes it when done."""

    state: AppState
    info: BlobInfo
    filename: str

    @property
    def size(self) -> int:
        return self.info.size

    def content_disposition(self) -> str:
        """``attachment`` with an ASCII fallback name and the exact (UTF-8) one: dataset names may be Persian."""
        fallback = _UNSAFE.sub("_", self.filename)
        return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(self.filename, safe='')}"

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in read_chunks(self.state.bus.js, self.info):
                yield chunk
        finally:
            # Also when the client goes away, mid-way or as soon as it holds the last byte. Starlette then cancels
            # the response's scope, and with it every await here: an awaited delete never ran and the zip stayed in
            # the bucket until its TTL (CI saw one left). The delete runs in a task of its own, which the
            # cancellation of this one does not stop; what a failure leaves, the bucket's TTL removes.
            deletion = asyncio.ensure_future(self._delete())
            _DELETIONS.add(deletion)
            deletion.add_done_callback(_DELETIONS.discard)
            await asyncio.shield(deletion)

    async def _delete(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_DELETE_S):
                await BlobStore(self.state.bus.js).delete([self.info.key])


async def _request(state: AppState, account_id: int, name: str) -> ExportRequest:
    """The dataset's live head and every tag (the head's columns may include inactive ones); 404 for a dataset
    of another account, 400 for one never trained."""

    async def read(uow: UnitOfWork) -> ExportRequest:
        dataset = await load_dataset(uow.repo, account_id, name)
        if dataset.head_version is None or dataset.kind not in ("text", "image"):
            raise BadRequest(f"dataset '{name}' has no trained head to export: report examples, then train it",
                             code="not_trained")
        tags = [ExportTag(id=tag.id, title=tag.title, active=tag.active, threshold_override=tag.threshold_override)
                for tag, _ in await uow.repo.tags_with_report_counts(dataset.id)]
        kind = "text" if dataset.kind == "text" else "image"
        return ExportRequest(head=HeadRef(dataset_id=dataset.id, version=dataset.head_version), dataset=dataset.name,
                             kind=kind, tags=tags)

    return await state.transact(read)


async def export_dataset(state: AppState, account_id: int, name: str) -> ExportedZip:
    request = await _request(state, account_id, name)
    subject = TEXT_EXPORT if request.kind == "text" else VISION_EXPORT
    reply = await state.bus.request(subject, request, ExportReply, idempotent=True)
    try:
        info = await blob_info(state.bus.js, reply.key)
    except NotFound as exc:  # the service said it put it there: ours to fix, not the client's
        raise Unavailable("the built export is missing from the blob store; try again") from exc
    log.info("dataset_export_ready", dataset=request.head.dataset_id, version=reply.version, bytes=info.size)
    return ExportedZip(state=state, info=info, filename=reply.filename)
