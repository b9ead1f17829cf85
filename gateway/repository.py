"""Every SQL statement of the gateway. The repository only runs SQL: the unit of work commits, and
the services tell it what changed (``gateway.uow``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import case, delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import distinct_on, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from shared.db.models import (
    Account,
    ApiToken,
    DataItem,
    Dataset,
    Embedding,
    HeadVersion,
    Outbox,
    Report,
    Suggestion,
    Tag,
    Webhook,
    WebhookDelivery,
)

# Row locks on tags: "reference" (FOR KEY SHARE) while reports that point at them are written, "change"
# (FOR NO KEY UPDATE) to update one, "delete" (FOR UPDATE) to delete one: a delete waits for the reports being
# written to commit, then deletes them too; reports written after a delete find no tag (404, not an FK error).
TagLock = Literal["reference", "change", "delete"]


# keep_inputs: insert the new inputs and trim the oldest, in one statement. The DELETE does not see the rows
# this statement inserts (one snapshot), so it keeps max_items minus those of the existing ones.
_KEEP_INPUTS = text("""
WITH added AS (
    INSERT INTO data_item (dataset_id, kind, content, source_url, content_hash, origin)
    SELECT :dataset_id, r.kind, r.content, r.source_url, r.content_hash, 'input'
    FROM unnest(CAST(:kinds AS text[]), CAST(:contents AS text[]), CAST(:urls AS text[]),
                CAST(:hashes AS text[])) AS r(kind, content, source_url, content_hash)
    ON CONFLICT (dataset_id, content_hash) DO NOTHING
    RETURNING id
)
DELETE FROM data_item WHERE id IN (
    SELECT id FROM data_item WHERE dataset_id = :dataset_id AND origin = 'input'
    ORDER BY id DESC OFFSET GREATEST(:max_items - (SELECT count(*) FROM added), 0)
)
""")


@dataclass(frozen=True)
class SuggestionRow:
    item_id: int
    kind: str
    content: str | None
    reason: str
    tag_id: int
    probability: float


@dataclass(frozen=True)
class TokenRow:
    id: int
    account: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class ItemRow:
    id: int
    kind: str
    content: str | None
    created_at: datetime


@dataclass(frozen=True)
class MediaRow:
    media: bytes
    media_type: str
    content_hash: str


class Repository:
    """SQL over one ``AsyncSession``; every lookup of tenant data takes the account id."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # Accounts and tokens

    async def get_or_create_account(self, name: str) -> int:
        await self.session.execute(insert(Account).values(name=name).on_conflict_do_nothing())
        account_id = await self.session.scalar(select(Account.id).where(Account.name == name))
        assert account_id is not None
        return int(account_id)

    async def add_token(self, account_id: int, token_hash: str, prefix: str) -> int:
        token_id = await self.session.scalar(
            insert(ApiToken)
            .values(account_id=account_id, token_hash=token_hash, prefix=prefix)
            .returning(ApiToken.id)
        )
        assert token_id is not None
        return int(token_id)

    async def account_for_token_hash(self, token_hash: str) -> int | None:
        return await self.session.scalar(
            select(ApiToken.account_id).where(
                ApiToken.token_hash == token_hash, ApiToken.revoked_at.is_(None)
            )
        )

    async def list_tokens(self, account: str | None = None) -> list[TokenRow]:
        query = (
            select(ApiToken.id, Account.name, ApiToken.prefix, ApiToken.created_at, ApiToken.revoked_at)
            .join(Account, Account.id == ApiToken.account_id)
            .order_by(ApiToken.id)
        )
        if account is not None:
            query = query.where(Account.name == account)
        return [TokenRow(*row) for row in (await self.session.execute(query)).all()]

    async def find_tokens(self, prefix_or_id: str) -> list[TokenRow]:
        query = select(
            ApiToken.id, Account.name, ApiToken.prefix, ApiToken.created_at, ApiToken.revoked_at
        ).join(Account, Account.id == ApiToken.account_id)
        if prefix_or_id.isdigit():
            query = query.where(ApiToken.id == int(prefix_or_id))
        else:
            query = query.where(ApiToken.prefix.startswith(prefix_or_id, autoescape=True))
        return [TokenRow(*row) for row in (await self.session.execute(query)).all()]

    async def revoke_token(self, token_id: int) -> None:
        await self.session.execute(
            update(ApiToken)
            .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
            .values(revoked_at=func.now())
        )

    # Datasets

    async def dataset_by_name(self, account_id: int, name: str) -> Dataset | None:
        return await self.session.scalar(
            select(Dataset).where(Dataset.account_id == account_id, Dataset.name == name)
        )

    async def insert_dataset(
        self, account_id: int, name: str, title: str, kind: str | None
    ) -> Dataset | None:
        """The new dataset, or None when the account already has one of that name."""
        dataset_id = await self.session.scalar(
            insert(Dataset)
            .values(account_id=account_id, name=name, title=title, kind=kind)
            .on_conflict_do_nothing(index_elements=[Dataset.account_id, Dataset.name])
            .returning(Dataset.id)
        )
        if dataset_id is None:
            return None
        return await self.session.get(Dataset, dataset_id)

    async def get_or_create_dataset(self, account_id: int, name: str) -> Dataset:
        created = await self.insert_dataset(account_id, name, name, None)
        if created is not None:
            return created
        existing = await self.dataset_by_name(account_id, name)
        assert existing is not None
        return existing

    async def list_datasets(self, account_id: int) -> Sequence[Dataset]:
        return (
            await self.session.scalars(
                select(Dataset).where(Dataset.account_id == account_id).order_by(Dataset.id)
            )
        ).all()

    async def fix_kind(self, dataset: Dataset, kind: str) -> str:
        """Set the kind if still unset (atomically: a concurrent first use may win) and return it."""
        fixed = await self.session.scalar(
            update(Dataset)
            .where(Dataset.id == dataset.id)
            .values(kind=func.coalesce(Dataset.kind, kind))
            .returning(Dataset.kind)
        )
        assert fixed is not None
        # Already written: record it on the object without marking it dirty.
        set_committed_value(dataset, "kind", fixed)
        return str(fixed)

    async def mark_waiting(self, dataset_id: int) -> None:
        await self.session.execute(
            update(Dataset)
            .where(Dataset.id == dataset_id)
            .values(state="waiting", state_reason=None, train_requested_at=func.now())
        )

    async def datasets_to_retrain(self) -> list[int]:
        """Ids of every account's datasets that have reports or a head (a zero-shot one has no report): an
        operator's retrain-all, never the API."""
        reported = select(Report.id).where(Report.dataset_id == Dataset.id).exists()
        return list(await self.session.scalars(
            select(Dataset.id).where(reported | Dataset.head_version.is_not(None)).order_by(Dataset.id)))

    async def dataset_counts(self, dataset_id: int) -> tuple[int, int]:
        """(reports, data items) of the dataset."""
        reports = (
            select(func.count()).select_from(Report).where(Report.dataset_id == dataset_id).scalar_subquery()
        )
        items = (
            select(func.count())
            .select_from(DataItem)
            .where(DataItem.dataset_id == dataset_id)
            .scalar_subquery()
        )
        row = (await self.session.execute(select(reports, items))).one()
        return int(row[0]), int(row[1])

    async def tags_with_report_counts(self, dataset_id: int) -> list[tuple[Tag, int]]:
        counts = (
            select(Report.tag_id, func.count().label("n"))
            .where(Report.dataset_id == dataset_id)
            .group_by(Report.tag_id)
            .subquery()
        )
        rows = await self.session.execute(
            select(Tag, func.coalesce(counts.c.n, 0))
            .outerjoin(counts, counts.c.tag_id == Tag.id)
            .where(Tag.dataset_id == dataset_id)
            .order_by(Tag.id)
        )
        return [(tag, int(n)) for tag, n in rows.all()]

    # Tags

    async def insert_tag(self, dataset_id: int, title: str) -> Tag:
        tag_id = await self.session.scalar(
            insert(Tag).values(dataset_id=dataset_id, title=title).returning(Tag.id)
        )
        tag = await self.session.get(Tag, tag_id)
        assert tag is not None
        return tag

    async def tags_of_account(
        self, account_id: int, tag_ids: Sequence[int], lock: TagLock | None = None
    ) -> dict[int, tuple[Tag, Dataset]]:
        """The account's tags among ``tag_ids`` with their datasets; others' tags are simply absent.
        ``lock`` holds the tag rows until the transaction ends (a tag deleted meanwhile is absent)."""
        if not tag_ids:
            return {}
        query = (
            select(Tag, Dataset)
            .join(Dataset, Dataset.id == Tag.dataset_id)
            .where(Tag.id.in_(set(tag_ids)), Dataset.account_id == account_id)
            .order_by(Tag.id)  # rows locked in one order by every writer
        )
        if lock is not None:
            query = query.with_for_update(of=Tag, read=lock == "reference", key_share=lock != "delete")
        rows = await self.session.execute(query)
        return {tag.id: (tag, dataset) for tag, dataset in rows.all()}

    async def active_tags(self, dataset_id: int) -> Sequence[Tag]:
        return (
            await self.session.scalars(
                select(Tag).where(Tag.dataset_id == dataset_id, Tag.active.is_(True)).order_by(Tag.id)
            )
        ).all()

    async def update_tag(self, tag_id: int, title: str | None, active: bool | None) -> Tag:
        values: dict[str, Any] = {}
        if title is not None:
            values["title"] = title
        if active is not None:
            values["active"] = active
        if values:
            await self.session.execute(update(Tag).where(Tag.id == tag_id).values(**values))
        tag = await self.session.get(Tag, tag_id, populate_existing=True)
        assert tag is not None
        return tag

    async def delete_tag(self, tag_id: int) -> int:
        """Delete the tag and its reports; returns how many reports went with it."""
        deleted = await self.session.scalar(
            select(func.count()).select_from(Report).where(Report.tag_id == tag_id)
        )
        await self.session.execute(delete(Report).where(Report.tag_id == tag_id))
        await self.session.execute(delete(Tag).where(Tag.id == tag_id))
        return int(deleted or 0)

    async def add_predictions(self, counts: dict[int, int]) -> None:
        """Add to each tag's prediction counter; rows locked in id order so writers never deadlock."""
        if not counts:
            return
        await self.session.execute(
            select(Tag.id).where(Tag.id.in_(sorted(counts))).order_by(Tag.id).with_for_update(key_share=True)
        )
        await self.session.execute(
            update(Tag)
            .where(Tag.id.in_(list(counts)))
            .values(predictions=Tag.predictions + case(counts, value=Tag.id, else_=0))
        )

    # Items and reports

    async def upsert_items(self, rows: Sequence[dict[str, Any]]) -> dict[tuple[int, str], int]:
        """Insert items not yet stored (by dataset and content hash); ids of all, keyed the same way."""
        if not rows:
            return {}
        values = insert(DataItem).values(list(rows))
        # A no-op update on conflict, so RETURNING yields the existing row's id as well.
        stmt = values.on_conflict_do_update(
            index_elements=[DataItem.dataset_id, DataItem.content_hash],
            # A kept input (keep_inputs) that gets reported becomes a reported item.
            set_={"dataset_id": values.excluded.dataset_id, "origin": values.excluded.origin},
        ).returning(DataItem.id, DataItem.dataset_id, DataItem.content_hash)
        result = await self.session.execute(stmt)
        return {(dataset_id, content_hash): item_id for item_id, dataset_id, content_hash in result.all()}

    async def add_embeddings(self, rows: Sequence[dict[str, Any]]) -> None:
        """Store embeddings of items; one already stored for the same model is kept."""
        if rows:
            await self.session.execute(insert(Embedding).values(list(rows)).on_conflict_do_nothing())

    async def upsert_reports(self, rows: Sequence[dict[str, Any]]) -> dict[tuple[int, int], int]:
        """Insert or replace each (item, tag) label; report ids keyed by (item_id, tag_id)."""
        if not rows:
            return {}
        values = insert(Report).values(list(rows))
        stmt = values.on_conflict_do_update(
            index_elements=[Report.item_id, Report.tag_id],
            set_={"positive": values.excluded.positive, "updated_at": func.now()},
        ).returning(Report.id, Report.item_id, Report.tag_id)
        result = await self.session.execute(stmt)
        return {(item_id, tag_id): report_id for report_id, item_id, tag_id in result.all()}

    async def account_items(self, account_id: int, item_ids: Sequence[int]) -> dict[int, int]:
        """Dataset id of each of the account's items among ``item_ids``; others' items are simply absent.
        The rows are key-share locked, so the dataset cannot delete them before the reports are written."""
        if not item_ids:
            return {}
        rows = await self.session.execute(
            select(DataItem.id, DataItem.dataset_id)
            .join(Dataset, Dataset.id == DataItem.dataset_id)
            .where(DataItem.id.in_(set(item_ids)), Dataset.account_id == account_id)
            .order_by(DataItem.id)
            .with_for_update(of=DataItem, key_share=True)
        )
        return {item_id: dataset_id for item_id, dataset_id in rows.all()}

    async def mark_reported(self, item_ids: Sequence[int]) -> None:
        """Kept tag-call inputs (origin 'input') that get a report become reported items."""
        if item_ids:
            await self.session.execute(
                update(DataItem).where(DataItem.id.in_(set(item_ids)), DataItem.origin != "report")
                .values(origin="report")
            )

    async def labels(self, item_ids: Sequence[int]) -> dict[int, list[tuple[int, bool]]]:
        """Every (tag_id, positive) each item has now, by tag id."""
        out: dict[int, list[tuple[int, bool]]] = {item_id: [] for item_id in item_ids}
        if not item_ids:
            return out
        rows = await self.session.execute(
            select(Report.item_id, Report.tag_id, Report.positive)
            .where(Report.item_id.in_(set(item_ids)))
            .order_by(Report.item_id, Report.tag_id)
        )
        for item_id, tag_id, positive in rows.all():
            out[item_id].append((tag_id, positive))
        return out

    # ---------------------------------------------------------------------------------------------------
    # Webhooks (issue 13): create_webhook, list_webhooks, delete_webhook.

    async def insert_webhook(
        self, account_id: int, dataset_id: int | None, url: str, events: Sequence[str], secret: str
    ) -> Webhook:
        webhook = Webhook(account_id=account_id, dataset_id=dataset_id, url=url, events=list(events), secret=secret)
        self.session.add(webhook)
        await self.session.flush()
        await self.session.refresh(webhook, ["created_at"])
        return webhook

    async def count_webhooks(self, account_id: int, *, lock: bool = False) -> int:
        """How many webhooks the account has; ``lock`` serialises the account's creations (its row, FOR UPDATE)."""
        if lock:
            await self.session.execute(select(Account.id).where(Account.id == account_id).with_for_update())
        count = await self.session.scalar(select(func.count()).where(Webhook.account_id == account_id))
        return int(count or 0)

    async def webhooks(self, account_id: int) -> list[tuple[Webhook, str | None]]:
        """The account's webhooks, oldest first, each with its dataset's name (None: every dataset)."""
        rows = await self.session.execute(
            select(Webhook, Dataset.name)
            .outerjoin(Dataset, Dataset.id == Webhook.dataset_id)
            .where(Webhook.account_id == account_id)
            .order_by(Webhook.id)
        )
        return [(webhook, name) for webhook, name in rows.all()]

    async def last_deliveries(self, webhook_ids: Sequence[int]) -> dict[int, WebhookDelivery]:
        """Each webhook's newest delivery, for those that have one."""
        if not webhook_ids:
            return {}
        rows = await self.session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.webhook_id.in_(list(webhook_ids)))
            .ext(distinct_on(WebhookDelivery.webhook_id))
            .order_by(WebhookDelivery.webhook_id, WebhookDelivery.id.desc())
        )
        return {d.webhook_id: d for d in rows.all()}

    async def delete_webhook(self, account_id: int, webhook_id: int) -> bool:
        """Delete the account's webhook (its deliveries go with it); False when it has none of that id."""
        deleted = await self.session.scalar(
            delete(Webhook)
            .where(Webhook.id == webhook_id, Webhook.account_id == account_id)
            .returning(Webhook.id)
        )
        return deleted is not None

    # ---------------------------------------------------------------------------------------------------
    # What to label next and similar items (issue 14): keep_inputs, suggestions, search.

    async def update_dataset(self, dataset_id: int, title: str | None, keep_inputs: bool | None) -> Dataset:
        values: dict[str, Any] = {}
        if title is not None:
            values["title"] = title
        if keep_inputs is not None:
            values["keep_inputs"] = keep_inputs
        if values:
            await self.session.execute(update(Dataset).where(Dataset.id == dataset_id).values(**values))
        dataset = await self.session.get(Dataset, dataset_id, populate_existing=True)
        assert dataset is not None
        return dataset

    async def keep_inputs(self, dataset_id: int, rows: Sequence[dict[str, Any]], max_items: int) -> None:
        """Store tag-call inputs as pool items (an item already there keeps its origin) and drop the dataset's
        oldest input items beyond ``max_items``, in one statement (one round trip per tag call)."""
        await self.session.execute(_KEEP_INPUTS, {
            "dataset_id": dataset_id, "max_items": max_items,
            "kinds": [r["kind"] for r in rows], "contents": [r.get("content") for r in rows],
            "urls": [r.get("source_url") for r in rows], "hashes": [r["content_hash"] for r in rows],
        })

    def _open_suggestion(self) -> Any:
        """A suggestion nobody answered since it was computed: no report of its pair since (and, for an
        uncertain item, no positive report of it for any tag: that makes it every other tag's negative)."""
        answered = select(Report.id).where(
            Report.item_id == Suggestion.item_id,
            Report.updated_at >= Suggestion.created_at,
            or_(Report.tag_id == Suggestion.tag_id, (Suggestion.reason == "uncertain") & Report.positive),
        )
        return ~answered.exists()

    async def suggestions(self, dataset_id: int, tag_id: int | None, limit: int) -> list[SuggestionRow]:
        query = (
            select(Suggestion.item_id, DataItem.kind, DataItem.content, Suggestion.reason, Suggestion.tag_id,
                   Suggestion.probability)
            .join(DataItem, DataItem.id == Suggestion.item_id)
            .where(Suggestion.dataset_id == dataset_id, self._open_suggestion())
            .order_by(Suggestion.rank)
            .limit(limit)
        )
        if tag_id is not None:
            query = query.where(Suggestion.tag_id == tag_id)
        return [SuggestionRow(*row) for row in (await self.session.execute(query)).all()]

    async def open_suggestions(self, dataset_id: int) -> int:
        count = await self.session.scalar(
            select(func.count()).select_from(Suggestion)
            .where(Suggestion.dataset_id == dataset_id, self._open_suggestion())
        )
        return int(count or 0)

    async def embeddings_of_dataset(self, dataset_id: int, model_id: str) -> tuple[list[int], list[bytes], int]:
        """Ids (ascending), raw float32 vectors and their dim, of the dataset's items embedded by ``model_id``."""
        rows = (await self.session.execute(
            select(Embedding.item_id, Embedding.dim, Embedding.vector)
            .join(DataItem, DataItem.id == Embedding.item_id)
            .where(DataItem.dataset_id == dataset_id, Embedding.model_id == model_id)
            .order_by(Embedding.item_id)
        )).all()
        return [r.item_id for r in rows], [r.vector for r in rows], (rows[0].dim if rows else 0)

    async def items_by_id(self, dataset_id: int, item_ids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
        """(kind, content) of those of ``item_ids`` the dataset still has."""
        if not item_ids:
            return {}
        rows = await self.session.execute(
            select(DataItem.id, DataItem.kind, DataItem.content)
            .where(DataItem.dataset_id == dataset_id, DataItem.id.in_(set(item_ids)))
        )
        return {r.id: (r.kind, r.content) for r in rows}

    # ---------------------------------------------------------------------------------------------------
    # Browsing and undo (issue 13): list_items pages, the kept image, delete_report.

    async def items_page(
        self, dataset_id: int, tag_id: int | None, before_id: int | None, limit: int
    ) -> list[ItemRow]:
        """Up to ``limit`` reported items of the dataset, newest (highest id) first, below ``before_id``.
        Keyset: a later page starts below the last id shown, so inserts meanwhile shift nothing."""
        reported = select(Report.id).where(Report.item_id == DataItem.id)
        query = select(DataItem.id, DataItem.kind, DataItem.content, DataItem.created_at).where(
            DataItem.dataset_id == dataset_id,
            # Kept tag-call inputs are not the dataset's items until someone reports them.
            or_(DataItem.origin == "report", reported.exists()),
        )
        if tag_id is not None:
            query = query.where(reported.where(Report.tag_id == tag_id).exists())
        if before_id is not None:
            query = query.where(DataItem.id < before_id)
        rows = await self.session.execute(query.order_by(DataItem.id.desc()).limit(limit))
        return [ItemRow(*row) for row in rows.all()]

    async def item_reports(self, item_ids: Sequence[int]) -> dict[int, list[tuple[int, int, bool]]]:
        """(report id, tag id, positive) of each item's reports, by tag id."""
        out: dict[int, list[tuple[int, int, bool]]] = {item_id: [] for item_id in item_ids}
        if not item_ids:
            return out
        rows = await self.session.execute(
            select(Report.item_id, Report.id, Report.tag_id, Report.positive)
            .where(Report.item_id.in_(set(item_ids)))
            .order_by(Report.item_id, Report.tag_id)
        )
        for item_id, report_id, tag_id, positive in rows.all():
            out[item_id].append((report_id, tag_id, positive))
        return out

    async def item_media(self, account_id: int, item_id: int) -> MediaRow | None:
        """The kept copy of the account's image item; None for another account's, a text or a missing item."""
        row = (
            await self.session.execute(
                select(DataItem.media, DataItem.media_type, DataItem.content_hash)
                .join(Dataset, Dataset.id == DataItem.dataset_id)
                .where(DataItem.id == item_id, Dataset.account_id == account_id, DataItem.media.is_not(None))
            )
        ).one_or_none()
        return None if row is None else MediaRow(bytes(row[0] or b""), row[1] or "application/octet-stream", row[2])

    async def delete_report(
        self, account_id: int, report_id: int | None, item_id: int | None, tag_id: int | None
    ) -> dict[str, Any] | None:
        """Delete the account's report, by id or by (item, tag); its row as it was, or None when there is none."""
        stmt = delete(Report).where(Report.dataset_id == Dataset.id, Dataset.account_id == account_id)
        if report_id is not None:
            stmt = stmt.where(Report.id == report_id)
        else:
            stmt = stmt.where(Report.item_id == item_id, Report.tag_id == tag_id)
        row = (
            await self.session.execute(
                stmt.returning(Report.id, Report.dataset_id, Report.item_id, Report.tag_id, Report.positive)
            )
        ).one_or_none()
        return None if row is None else dict(row._mapping)

    # Outbox

    async def next_outbox_ids(self, n: int) -> list[int]:
        """Reserve ``n`` outbox ids, so a message id can name its own row."""
        rows = await self.session.scalars(
            select(func.nextval(func.pg_get_serial_sequence("outbox", "id"))).select_from(
                func.generate_series(1, n)
            )
        )
        return [int(v) for v in rows.all()]

    async def add_outbox(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            await self.session.execute(insert(Outbox).values(list(rows)))

    async def count_unpublished(self, ids: Sequence[int]) -> int:
        """Rows of ``ids`` still unpublished that no one is publishing now: a sweep mid-publish holds its rows
        locked until it marks them, so they are skipped, not counted as left behind."""
        if not ids:
            return 0
        query = (select(Outbox.id).where(Outbox.id.in_(list(ids)), Outbox.published_at.is_(None))
                 .with_for_update(skip_locked=True))
        return len((await self.session.scalars(query)).all())

    async def lock_unpublished(self, ids: Sequence[int] | None, limit: int) -> Sequence[Outbox]:
        """Unpublished rows, locked; rows another replica holds are skipped, not waited for."""
        query = select(Outbox).where(Outbox.published_at.is_(None))
        if ids is not None:
            query = query.where(Outbox.id.in_(list(ids)))
        query = query.order_by(Outbox.id).limit(limit).with_for_update(skip_locked=True)
        return (await self.session.scalars(query)).all()

    async def mark_published(self, ids: Sequence[int]) -> None:
        if ids:
            await self.session.execute(
                update(Outbox).where(Outbox.id.in_(list(ids))).values(published_at=func.now())
            )

    async def ping(self) -> None:
        await self.session.execute(text("SELECT 1"))

    # Head versions and thresholds (issue 13): list_versions, use_version, update_tag's threshold

    async def head_versions(self, dataset_id: int) -> Sequence[HeadVersion]:
        """The dataset's stored versions, newest first."""
        return (await self.session.scalars(
            select(HeadVersion).where(HeadVersion.dataset_id == dataset_id).order_by(HeadVersion.version.desc())
        )).all()

    async def lock_dataset(self, dataset_id: int) -> Dataset | None:
        """The dataset row, re-read and held until the transaction ends (FOR NO KEY UPDATE, as the trainer's
        commit and retention take it): no version is stored or deleted meanwhile."""
        return (await self.session.execute(
            select(Dataset).where(Dataset.id == dataset_id).with_for_update(key_share=True)
            .execution_options(populate_existing=True)
        )).scalar_one_or_none()

    async def head_version(self, dataset_id: int, version: int) -> HeadVersion | None:
        return (await self.session.execute(
            select(HeadVersion).where(HeadVersion.dataset_id == dataset_id, HeadVersion.version == version)
        )).scalar_one_or_none()

    async def version_confusion(self, dataset_id: int, version: int) -> dict[str, Any] | None:
        return await self.session.scalar(
            select(HeadVersion.confusion).where(HeadVersion.dataset_id == dataset_id, HeadVersion.version == version)
        )

    async def head_mode(self, dataset_id: int, version: int) -> str | None:
        """How that version was made (trained | zero_shot); None when it is not stored."""
        return (await self.session.execute(
            select(HeadVersion.mode).where(HeadVersion.dataset_id == dataset_id, HeadVersion.version == version)
        )).scalar_one_or_none()

    async def make_live(self, dataset_id: int, version: HeadVersion) -> None:
        """Point the dataset at ``version`` with its figures, and each tag at the threshold and figures that
        version learned (none for a tag it did not know). A held version is held no more."""
        await self.session.execute(update(HeadVersion).where(HeadVersion.id == version.id).values(held=False))
        await self.session.execute(
            update(Dataset).where(Dataset.id == dataset_id).values(
                head_version=version.version, evaluation=version.evaluation, model_id=version.model_id,
                # A trained dataset's reason (a held fit) no longer holds once a person chose the version.
                state_reason=case((Dataset.state == "trained", None), else_=Dataset.state_reason),
            )
        )
        learned = version.tags or {}
        tag_ids = (await self.session.scalars(select(Tag.id).where(Tag.dataset_id == dataset_id))).all()
        null = {"recall": None, "precision": None, "f1": None}
        rows = [
            {"id": tag_id, "threshold": (learned.get(str(tag_id)) or {}).get("threshold"),
             "evaluation": (learned.get(str(tag_id)) or {}).get("evaluation") or null}
            for tag_id in tag_ids
        ]
        if rows:
            await self.session.execute(update(Tag), rows)  # an executemany by primary key

    async def set_threshold_override(self, tag_id: int, threshold: float | None) -> None:
        await self.session.execute(update(Tag).where(Tag.id == tag_id).values(threshold_override=threshold))
