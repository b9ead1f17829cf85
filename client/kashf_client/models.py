"""Typed answers of the Kashf API (SPEC.md). Unknown fields are kept (``extra="allow"``), so a newer server
that adds a field never breaks an older client; fields a server may leave out default to None."""

from __future__ import annotations

import json
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class TagScore(_Model):
    """One tag of a tagging answer; id 0 is the unknown tag."""

    id: int
    probability: float
    title: str


class TextTags(_Model):
    content: str
    tags: list[TagScore]
    error: str | None = None


class ImageTags(_Model):
    """Named by ``image_url`` or, for an upload, ``image_file``; ``error`` when that one image failed."""

    image_url: str | None = None
    image_file: str | None = None
    error: str | None = None
    tags: list[TagScore] = Field(default_factory=list)


class Frame(_Model):
    frame: int
    time: str
    tags: list[TagScore]


class VideoTags(_Model):
    video_url: str | None = None
    video_file: str | None = None
    error: str | None = None
    frames: list[Frame] = Field(default_factory=list)


class VideoJobQueued(_Model):
    job_id: str
    state: str


class ErrorBody(_Model):
    error: str
    detail: str


class VideoJob(_Model):
    job_id: str
    state: str
    result: list[VideoTags] | None = None
    error: ErrorBody | None = None


class Evaluation(_Model):
    """Cross-validated figures in percent; None when a tag had too few reports."""

    recall: float | None = None
    precision: float | None = None
    f1: float | None = None


class TagInfo(_Model):
    title: str
    id: int
    reports: int
    predictions: int = 0
    evaluation: Evaluation | None = None
    threshold: float | None = None


class DatasetInfo(_Model):
    title: str
    state: str
    report_count: int
    data_count: int
    evaluation: Evaluation | None = None
    tags: list[TagInfo] | None = None
    version: int | None = None
    mode: str | None = None  # how the live head was made: "trained" (reports) or "zero_shot" (tag titles alone)


class Dataset(_Model):
    dataset: str
    title: str
    kind: str | None = None
    state: str | None = None
    keep_inputs: bool | None = None


class TrainState(_Model):
    dataset: str
    state: str


class Tag(_Model):
    title: str
    tag_id: int
    active: bool
    threshold: float | None = None


class DeletedTag(_Model):
    dataset: str
    deleted_reports: int


class Report(_Model):
    """One reported item: ``id`` is the data item, ``report`` its labels as a JSON string. An uploaded file
    that failed has ``image_file`` and ``error`` instead."""

    id: int | None = None
    report: str | None = None
    image_file: str | None = None
    error: str | None = None

    @property
    def labels(self) -> list[tuple[int, bool]]:
        """``report`` decoded: every ``(tag_id, positive)`` label of the item."""
        return [(int(t), bool(p)) for t, p in json.loads(self.report or "[]")]


class Item(_Model):
    id: int
    content: str | None = None
    image: str | None = None
    reports: list[tuple[int, bool]] = Field(default_factory=list)
    report_ids: list[int] = Field(default_factory=list)  # the id of each label in ``reports`` (delete_report)
    created: datetime | None = None


class ItemPage(_Model):
    items: list[Item]
    next_cursor: str | None = None


class Deleted(_Model):
    id: int | str
    deleted: bool = True


class Version(_Model):
    version: int
    created: datetime | None = None
    state: str
    report_count: int | None = None
    evaluation: Evaluation | None = None
    mode: str | None = None  # "trained" or "zero_shot", as dataset_info's
    pseudo_labels: int = 0  # kept inputs that joined the fit by self-training (0 from servers before it)


class WebhookDelivery(_Model):
    event: str
    state: str
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    at: datetime | None = None


class Webhook(_Model):
    """``secret`` is shown by create_webhook only; ``last_delivery`` by list_webhooks."""

    id: int | str
    url: str
    dataset: str | None = None
    events: list[str] = Field(default_factory=list)
    secret: str | None = None
    created: datetime | None = None
    last_delivery: WebhookDelivery | None = None


class Suggestion(_Model):
    item_id: int
    reason: str
    content: str | None = None
    image: str | None = None
    tag_id: int | None = None
    probability: float | None = None


class SearchHit(_Model):
    item_id: int
    score: float
    content: str | None = None
    image: str | None = None
    reports: list[tuple[int, bool]] = Field(default_factory=list)


# Requests


class TextReport(BaseModel):
    """A label to send: ``positive=False`` says the text is not that tag."""

    model_config = ConfigDict(frozen=True)

    content: str
    tag_id: int
    positive: bool = True


class ImageReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    image_url: str
    tag_id: int
    positive: bool = True


class ItemReport(BaseModel):
    """A label on a stored item, by its id (from list_items, suggest_labels or search)."""

    model_config = ConfigDict(frozen=True)

    item_id: int
    tag_id: int
    positive: bool = True
