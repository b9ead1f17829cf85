"""Where the trainer puts fitted heads: the JetStream object store the model services read them from."""

from __future__ import annotations

from collections.abc import Sequence

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from modelkit.heads import Head, delete_heads, store_head
from shared import subjects
from shared.errors import Unavailable


class ObjectStoreHeads:
    """Stores heads (``modelkit.heads.store_head``), deletes those retention gave up (``versions_kept``: how
    many old versions a dataset keeps besides its live one and newer held ones, see
    ``trainer.repository.doomed_versions``), and says whether a stored one is still there."""

    def __init__(self, js: JetStreamContext, versions_kept: int = 3) -> None:
        self.js = js
        self.versions_kept = versions_kept

    async def put(self, dataset_id: int, head: Head) -> str:
        return await store_head(self.js, dataset_id, head)

    async def delete(self, names: Sequence[str]) -> None:
        """Unavailable when the store cannot be reached; an object already gone counts as deleted."""
        await delete_heads(self.js, names)

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
