"""Vision service logic: load each image (URL, upload, inline), decode in threads, embed in batches, tag.

Each image runs its own pipeline, so decoding overlaps model calls and a bad image fails only its item."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import structlog
from PIL import Image

from modelkit.fetch import Fetcher
from modelkit.heads import Head, tag_vectors
from modelkit.service import DEFAULT_BATCHING, BatchedModelService, Batching, HeadSource
from shared.errors import BadRequest, KashfError, TooLarge, Unavailable
from shared.schemas.inference import ItemResult, TagRef, TagReply, pack_vectors
from shared.schemas.media import (
    EmbedImagesReply,
    EmbedImagesRequest,
    ImageEmbedding,
    MediaInput,
    TagImagesRequest,
)
from vision_service.decode import COPY_MEDIA_TYPE, bounded_copy, decode_image
from vision_service.model import Encoder

log = structlog.get_logger(__name__)

T = TypeVar("T")

# CLIP's learned temperature; cosine of matching image/text pairs sits ~0.1 above non-matching ones.
ZERO_SHOT_LOGIT_SCALE = 100.0
ZERO_SHOT_FLOOR = 0.2
_TITLE_CACHE = 4096


class BlobSource(Protocol):
    """Uploaded bytes by key (the BLOBS_BUCKET object store); raises KashfError when missing or too big."""

    async def get(self, key: str, max_bytes: int) -> bytes: ...


@dataclass(frozen=True)
class Decoded:
    """One image ready for the model, with what the caller asked to keep."""

    pixels: np.ndarray
    sha256: str
    copy: bytes | None


@dataclass(frozen=True)
class Embedded:
    vector: np.ndarray | None = None
    sha256: str | None = None
    copy: bytes | None = None
    error: KashfError | None = None


def zero_shot_probabilities(
    images: np.ndarray, titles: np.ndarray, *, scale: float = ZERO_SHOT_LOGIT_SCALE,
    floor: float = ZERO_SHOT_FLOOR,
) -> np.ndarray:
    """(n, m) probabilities from unit image (n, d) and title (m, d) embeddings: softmax over the titles
    and a "none" column at cosine ``floor`` (one title: ``sigmoid(scale * (cos - floor))``; several:
    at most one passes 0.5)."""
    logits = scale * np.concatenate(
        [images.astype(np.float64) @ titles.astype(np.float64).T, np.full((images.shape[0], 1), floor)],
        axis=1,
    )
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    probs: np.ndarray = (exp / exp.sum(axis=1, keepdims=True))[:, :-1]
    return probs


async def _all_or_cancel(aws: Sequence[Awaitable[T]]) -> list[T]:
    """gather(), but a failure cancels the siblings instead of leaving them running."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class VisionService(BatchedModelService[np.ndarray]):
    """Embeds and tags images; owns no transport (fetcher, blob store and heads are handed in)."""

    def __init__(
        self,
        encoder: Encoder,
        heads: HeadSource,
        fetcher: Fetcher,
        blobs: BlobSource,
        *,
        max_image_bytes: int,
        max_image_pixels: int,
        min_side: int | None = 256,
        copy_resample: Image.Resampling = Image.Resampling.BILINEAR,
        decode_workers: int = 2,
        max_inflight: int = 16,
        zero_shot_scale: float = ZERO_SHOT_LOGIT_SCALE,
        zero_shot_floor: float = ZERO_SHOT_FLOOR,
        batching: Batching = DEFAULT_BATCHING,
    ) -> None:
        super().__init__(encoder, heads, self._encode_batch, name="image", batching=batching,
                         pool_workers=decode_workers)
        self.encoder: Encoder = encoder
        self.fetcher = fetcher
        self.blobs = blobs
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels
        self.min_side = min_side
        self.copy_resample = copy_resample
        self.zero_shot_scale = zero_shot_scale
        self.zero_shot_floor = zero_shot_floor
        # Bounds the original bytes held at once: each in-flight image may be up to max_image_bytes.
        self._inflight = asyncio.Semaphore(max_inflight)
        self._titles: OrderedDict[str, np.ndarray] = OrderedDict()

    # ------------------------------------------------------------------ pipeline

    def _encode_batch(self, batch: list[np.ndarray]) -> Sequence[np.ndarray]:
        vectors = self.encoder.encode_batch(np.stack(batch))
        return list(vectors)

    def _decode(self, data: bytes, keep_copy: bool) -> Decoded:
        """Runs in the decode pool: hash, decode, preprocess (and the bounded copy)."""
        sha = hashlib.sha256(data).hexdigest()
        image = decode_image(data, max_pixels=self.max_image_pixels, min_side=self.min_side)
        pixels = np.asarray(self.encoder.preprocess(image), dtype=np.float32)
        copy = None
        if keep_copy:
            copy = bounded_copy(image, short_side=self.min_side or 256, resample=self.copy_resample)
        return Decoded(pixels, sha, copy)

    async def _load(self, item: MediaInput) -> bytes:
        sources = [item.url is not None, item.blob_key is not None, item.data is not None]
        if sum(sources) != 1:
            raise BadRequest("each image needs exactly one of url, blob_key and data", code="invalid")
        if item.url is not None:
            fetched = await self.fetcher.fetch(item.url, accept=("image/",), max_bytes=self.max_image_bytes)
            return fetched.content
        if item.blob_key is not None:
            return await self.blobs.get(item.blob_key, self.max_image_bytes)
        data = item.data or b""
        if len(data) > self.max_image_bytes:
            raise TooLarge(f"image over {self.max_image_bytes} bytes (KASHF_MAX_IMAGE_BYTES)")
        return data

    async def _one(self, item: MediaInput, keep_copy: bool) -> Embedded:
        """One image end to end; its own failure (fetch, size, decode) is returned, not raised."""
        loop = asyncio.get_running_loop()
        pool = self._pool
        if pool is None:
            raise Unavailable("vision service is not running")
        try:
            async with self._inflight:
                data = await self._load(item)
                decoded = await loop.run_in_executor(pool, self._decode, data, keep_copy)
        except KashfError as exc:
            return Embedded(error=exc)
        # Batcher failures (queue full, model error) are the whole request's, so they propagate.
        (vector,) = await self.batcher.submit([decoded.pixels])
        return Embedded(vector=vector, sha256=decoded.sha256, copy=decoded.copy)

    async def _embed_all(self, images: Sequence[MediaInput], keep_copy: bool) -> list[Embedded]:
        return await _all_or_cancel([self._one(item, keep_copy) for item in images])

    # ------------------------------------------------------------------ requests

    async def embed(self, request: EmbedImagesRequest) -> EmbedImagesReply:
        """One ImageEmbedding per image, same order; a failed image carries its error instead."""
        results = await self._embed_all(request.images, request.keep_copy)
        items: list[ImageEmbedding] = []
        for r in results:
            if r.error is not None:
                items.append(ImageEmbedding(error=r.error.detail, error_code=r.error.error_code,
                                            error_status=r.error.status))
                continue
            assert r.vector is not None
            # Base64Bytes fields validate (decode) base64 input, so raw bytes are encoded first.
            items.append(ImageEmbedding(
                vector=base64.b64encode(pack_vectors(r.vector[None, :])), sha256=r.sha256,
                copy_bytes=base64.b64encode(r.copy) if r.copy is not None else None,
                copy_media_type=COPY_MEDIA_TYPE if r.copy is not None else None,
            ))
        return EmbedImagesReply(model_id=self.model_id, dim=self.dim, items=items)

    async def tag(self, request: TagImagesRequest) -> TagReply:
        """Tags per image (head, then zero-shot for tags the head lacks); failed images carry their error.

        A head fitted on another embedding model is a 503 ``head_model_mismatch`` (retrain the dataset).
        """
        head = await self.head_for(request.head)
        results = await self._embed_all(request.images, keep_copy=False)
        ok = [i for i, r in enumerate(results) if r.vector is not None]
        tagged: dict[int, ItemResult] = {}
        if ok:
            vectors = np.stack([v for v in (results[i].vector for i in ok) if v is not None])
            zero_shot = await self._zero_shot(head, vectors, request.tags)
            chosen = tag_vectors(head, vectors, request.tags, zero_shot, top_k=request.top_k,
                                 min_probability=request.min_probability)
            for i, tags in zip(ok, chosen, strict=True):
                tagged[i] = ItemResult(tags=tags)
        items = [
            tagged[i] if i in tagged else ItemResult(
                tags=[], error=r.error.detail if r.error else "image failed",
                error_code=r.error.error_code if r.error else "internal",
            )
            for i, r in enumerate(results)
        ]
        return TagReply(model_id=self.model_id, items=items)

    # ------------------------------------------------------------------ zero-shot

    async def _zero_shot(
        self, head: Head | None, vectors: np.ndarray, tags: Sequence[TagRef]
    ) -> np.ndarray | None:
        """(n, len(tags)) probabilities for the tags the head does not know; None without a text tower."""
        if not self.encoder.has_text_tower or not tags:
            return None
        known = set(head.tag_ids.tolist()) if head is not None else set()
        missing = [j for j, t in enumerate(tags) if t.id not in known]
        if not missing:
            return None
        titles = await self._title_vectors([tags[j].title for j in missing])
        out = np.zeros((vectors.shape[0], len(tags)), dtype=np.float64)
        out[:, missing] = zero_shot_probabilities(
            vectors, titles, scale=self.zero_shot_scale, floor=self.zero_shot_floor
        )
        return out

    async def _title_vectors(self, titles: list[str]) -> np.ndarray:
        """Unit text-tower embeddings of ``titles``, cached by title (they repeat on every request)."""
        new = [t for t in dict.fromkeys(titles) if t not in self._titles]
        if new:
            vectors = await asyncio.to_thread(self.encoder.encode_texts, new)
            for title, vector in zip(new, vectors, strict=True):
                self._titles[title] = vector
        for title in titles:
            self._titles.move_to_end(title)
        rows = np.stack([self._titles[t] for t in titles])
        while len(self._titles) > _TITLE_CACHE:
            self._titles.popitem(last=False)
        return rows
