"""Where the trainer puts fitted heads: the JetStream object store the model services read them from."""

from __future__ import annotations

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from modelkit.heads import Head, prune_heads, store_head
from shared import subjects
from shared.errors import Unavailable


class ObjectStoreHeads:
    """Stores heads (``modelkit.heads.store_head``), keeps the live one and ``versions_kept`` before it, and
    says whether a stored one is still there."""

    def __init__(self, js: JetStreamContext, versions_kept: int = 3) -> None:
        self.js = js
        self.versions_kept = versions_kept

    async def put(self, dataset_id: int, head: Head) -> str:
        return await store_head(self.js, dataset_id, head)

    async def prune(self, dataset_id: int, live_version: int) -> None:
        """Best effort: a failure is logged and the next prune finishes the job."""
        await prune_heads(self.js, dataset_id, live_version, self.versions_kept)

    async def exists(self, object_name: str) -> bool:
        """False when the object or the whole bucket is gone (an object store lost or wiped)."""
        try:
            store = await self.js.object_store(subjects.HEADS_BUCKET)
            await store.get_info(object_name)
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.BucketNotFoundError):
            return False
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise Unavailable("head store unavailable") from exc
        return True
