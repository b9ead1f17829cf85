"""The relational schema. Changes go through an Alembic migration in ``migrations/versions``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSONB}


def _now() -> Any:
    return func.now()


class Account(Base):
    __tablename__ = "account"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class ApiToken(Base):
    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Dataset(Base):
    __tablename__ = "dataset"
    __table_args__ = (
        UniqueConstraint("account_id", "name"),
        # The trainer's stall sweeper reads waiting and training datasets only (migrations 0003, 0004).
        Index("ix_dataset_waiting", "id", postgresql_where=text("state = 'waiting'")),
        Index("ix_dataset_training", "id", postgresql_where=text("state = 'training'")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(String(500))
    kind: Mapped[str | None] = mapped_column(String(16))  # text | image, fixed by first use
    state: Mapped[str] = mapped_column(String(16), server_default="untrained")
    state_reason: Mapped[str | None] = mapped_column(Text)
    head_version: Mapped[int | None] = mapped_column(Integer)
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    model_id: Mapped[str | None] = mapped_column(String(200))
    trained_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    train_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Keep the texts and images sent to the tag calls as pool items for suggest_labels (migration 0005).
    keep_inputs: Mapped[bool] = mapped_column(Boolean, server_default="false")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class Tag(Base):
    __tablename__ = "tag"

    id: Mapped[int] = mapped_column(BigInteger, Identity(start=1), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("dataset.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(500))
    active: Mapped[bool] = mapped_column(Boolean, server_default="true")
    predictions: Mapped[int] = mapped_column(BigInteger, server_default="0")
    threshold: Mapped[float | None] = mapped_column(Float)  # learned by the live head's fit
    threshold_override: Mapped[float | None] = mapped_column(Float)  # set by update_tag; wins when set
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class DataItem(Base):
    """One text or image of a dataset, stored once (dedup by normalised text or image bytes hash)."""

    __tablename__ = "data_item"
    __table_args__ = (
        UniqueConstraint("dataset_id", "content_hash"),
        # list_items pages newest first by id within a dataset (keyset pagination, migration 0005).
        Index("ix_data_item_dataset_newest", "dataset_id", text("id DESC")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(start=1), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("dataset.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    content_hash: Mapped[str] = mapped_column(String(64))
    content: Mapped[str | None] = mapped_column(Text)
    source_url: Mapped[str | None] = mapped_column(Text)
    media: Mapped[bytes | None] = mapped_column(LargeBinary)  # bounded copy, enough to re-embed
    media_type: Mapped[str | None] = mapped_column(String(64))
    # "report": reported (or created by a report); "input": kept from a tag call (keep_inputs), until reported.
    origin: Mapped[str] = mapped_column(String(16), server_default="report")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class Embedding(Base):
    """Frozen embedding of an item by one model; a model change means re-embedding from the item."""

    __tablename__ = "embedding"

    item_id: Mapped[int] = mapped_column(ForeignKey("data_item.id", ondelete="CASCADE"), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, row-major
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class Report(Base):
    __tablename__ = "report"
    # ix_report_dataset_item: the trainer reads a dataset's reports in keyset pages on (item, tag).
    __table_args__ = (UniqueConstraint("item_id", "tag_id"), Index("ix_report_dataset_tag", "dataset_id", "tag_id"),
                      Index("ix_report_dataset_item", "dataset_id", "item_id", "tag_id"))

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("dataset.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("data_item.id", ondelete="CASCADE"), index=True)
    tag_id: Mapped[int] = mapped_column(ForeignKey("tag.id", ondelete="CASCADE"))
    positive: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class Outbox(Base):
    """Events committed with their cause and published to JetStream afterwards (at least once)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200))
    msg_id: Mapped[str] = mapped_column(String(100), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)


class HeadVersion(Base):
    """A fitted head of a dataset; the blob lives in the heads object store under ``object_name``."""

    __tablename__ = "head_version"
    __table_args__ = (UniqueConstraint("dataset_id", "version"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("dataset.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[str] = mapped_column(String(200))
    object_name: Mapped[str] = mapped_column(String(200))
    report_count: Mapped[int] = mapped_column(Integer)
    # sha256 of what the fit read (model, reports, tags): equal on the next request means nothing changed.
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    # Migration 0005. Live is the version the dataset points at; a held fit lost the promotion gate and
    # stays held until use_version or a forced train promotes it.
    held: Mapped[bool] = mapped_column(Boolean, server_default="false")
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSONB)  # {"recall", "precision", "f1"} percent
    macro_f1: Mapped[float | None] = mapped_column(Float)  # cross-validated, for the promotion gate
    # Per tag id (as a string): {"threshold": learned threshold, "evaluation": figures}; restored by use_version.
    tags: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # Migration 0006. The fit's out-of-fold confusion counts (trainer.fitresult.FitResult.confusion): null for a
    # fit with nothing evaluated, or one stored before 0006.
    confusion: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # Migration 0007: "trained" (from reports) or "zero_shot" (a text dataset's tag titles alone, no report).
    mode: Mapped[str] = mapped_column(String(16), server_default="trained")
    # Migration 0009: unlabelled pool items that joined the fit as pseudo-examples (trainer.selftraining).
    pseudo_labels: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class Webhook(Base):
    """An account's subscription to training events, of one dataset or (dataset_id None) all of them."""

    __tablename__ = "webhook"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("dataset.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSONB)
    secret: Mapped[str] = mapped_column(String(128))  # the HMAC key; shown once, needed to sign
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class WebhookDelivery(Base):
    """One event to one webhook: written with the fit that caused it, delivered (retried) from JetStream."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        # The trainer's sweep reads pending rows only; list_webhooks reads each webhook's newest row.
        Index("ix_webhook_delivery_pending", "id", postgresql_where=text("state = 'pending'")),
        Index("ix_webhook_delivery_webhook_newest", "webhook_id", text("id DESC")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhook.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    state: Mapped[str] = mapped_column(String(16), server_default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class Suggestion(Base):
    """What to label next, computed by the trainer after each fit from the live head (suggest_labels)."""

    __tablename__ = "suggestion"
    __table_args__ = (Index("ix_suggestion_dataset_rank", "dataset_id", "rank"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("dataset.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("data_item.id", ondelete="CASCADE"), index=True)
    tag_id: Mapped[int] = mapped_column(ForeignKey("tag.id", ondelete="CASCADE"), index=True)
    reason: Mapped[str] = mapped_column(String(16))  # uncertain | suspect
    probability: Mapped[float] = mapped_column(Float)
    rank: Mapped[int] = mapped_column(Integer)  # ascending: best first within the dataset
    version: Mapped[int] = mapped_column(Integer)  # the head version that scored it
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
