"""The public API's request and response bodies, with the reference's examples for /docs. List and text
lengths are limits that are settings (413 from the services, naming the setting), not schema rules (422).
Services answer with the response models; a field marked ``Absent`` is left out of the JSON when None.
The JSON schema states every rule the server enforces, also those it answers 400 (so clients can trust it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from shared.schemas.media import MediaInput

# Postgres text holds no NUL: a string with one is refused (422, see ``_Body``), as this pattern says.
NO_NUL: dict[str, Any] = {"pattern": r"^[^\u0000]*$"}
Text = Annotated[str, Field(json_schema_extra=NO_NUL)]
Name = Annotated[str, Field(min_length=1, max_length=200, json_schema_extra=NO_NUL)]
TitleText = Annotated[str, Field(min_length=1, max_length=500, json_schema_extra=NO_NUL)]
DatasetName = Field(description="the dataset's name, unique per account")
# An empty list is refused with 400 (SPEC), not by the schema parser: the bound is stated for clients only.
NON_EMPTY: dict[str, Any] = {"minItems": 1}
NonEmpty = Field(json_schema_extra=NON_EMPTY)

# Ids are Postgres bigints: anything outside is a schema error (422), not a database error. Stated as int64
# rather than a maximum, which FastAPI's OpenAPI model would print as a float (2**63, one too many).
TagId = Annotated[
    int, Field(ge=0, le=2**63 - 1), WithJsonSchema({"type": "integer", "format": "int64", "minimum": 0})
]
# A finite number of seconds, at most a day (video_service caps what it analyses lower, by its own setting).
Seconds = Annotated[float, Field(allow_inf_nan=False, le=86_400, json_schema_extra={"minimum": 0})]


def _unstorable(text: str) -> str | None:
    """Why Postgres and NATS cannot carry ``text`` (a NUL, or a lone UTF-16 surrogate), or None."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone surrogate (\\ud800-\\udfff), which is not valid Unicode text"
    return None


def _bad_text(value: Any, path: str) -> str | None:
    """The first string in a JSON body that cannot be stored, as "<path> <reason>"."""
    if isinstance(value, str):
        reason = _unstorable(value)
        return f"{path} {reason}" if reason else None
    if isinstance(value, dict):
        for key, item in value.items():
            if (found := _bad_text(item, f"{path}.{key}" if path else str(key))) is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            if (found := _bad_text(item, f"{path}[{i}]")) is not None:
                return found
    return None


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        # Postgres text holds neither NUL nor lone surrogates: refuse them here, naming the field.
        if (found := _bad_text(data, "")) is not None:
            raise ValueError(found)
        return data


# Requests


class TagOptions(_Body):
    """What the tag calls answer per item (head versions and thresholds, issue 13)."""

    top_k: int | None = Field(None, ge=1, le=10_000, strict=True, description="at most this many tags per item")
    min_probability: float | None = Field(
        None, ge=0, le=1, allow_inf_nan=False, strict=True,
        description="every active tag at or above this probability, in place of each tag's own threshold",
    )


class TagTextsBody(TagOptions):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "dataset": "digikala",
                    "contents": [
                        "ارزش خریدنش رو بی شک داره",
                        "اصلا اصلا کیفیت نداره رنگش بااین عکس زمین تاآسمون فرق داره",
                    ],
                },
                {"dataset": "digikala", "contents": ["ارزش خریدنش رو بی شک داره"], "top_k": 1,
                 "min_probability": 0.3},
            ]
        }
    )

    dataset: Name = DatasetName
    contents: list[Text] = NonEmpty


class TagImagesBody(TagOptions):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"dataset": "iran", "image_urls": ["https://media.mehrnews.com/d/2016/08/13/4/2171627.jpg"]},
                {"dataset": "iran", "image_urls": ["https://media.mehrnews.com/d/2016/08/13/4/2171627.jpg"],
                 "top_k": 2},
            ]
        }
    )

    dataset: Name = DatasetName
    image_urls: list[Text] = NonEmpty


class VideoParams(TagOptions):
    # Lower bounds are 400s (SPEC: "negative every_ms"), checked by shared.schemas.media.check_video_params.
    dataset: Name = DatasetName
    every_ms: int = Field(
        1000, le=86_400_000, json_schema_extra={"minimum": 1},
        description="sample one frame every this many milliseconds of video time",
    )
    duration: Seconds | None = Field(None, description="analyse only the first seconds; absent or 0: whole video")
    min_frame_diff: float = Field(
        0, json_schema_extra={"minimum": 0, "maximum": 255},
        description="mean absolute difference (0-255) to the last analysed frame",
    )
    async_: bool = Field(
        False, alias="async", strict=True,
        description="answer at once with a job_id; poll POST /api/video_job/ for the result (long videos)",
    )


class TagVideoBody(VideoParams):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "dataset": "iran",
                    "every_ms": 100,
                    "duration": 25,
                    "min_frame_diff": 50,
                    "video_urls": [
                        "https://hw15.cdn.asset.aparat.com/aparat-video/"
                        "98b7e4cc00c97dffde2ae00567b98a4312759670-480p__79959.mp4"
                    ],
                },
            ]
        }
    )

    video_urls: list[Text] = NonEmpty


class DatasetBody(_Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{"dataset": "iran"}]})

    dataset: Name = DatasetName


class DatasetInfoBody(DatasetBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"dataset": "iran", "tags": True}]})

    tags: bool = Field(True, strict=True)


class CreateDatasetBody(DatasetBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"dataset": "iran", "title": "لحظه", "kind": "image"}]}
    )

    title: TitleText | None = Field(None, description="defaults to the name")
    kind: Literal["text", "image"] | None = Field(
        None, description="absent: fixed by the first report or tagging"
    )
    keep_inputs: bool = Field(False, strict=True, description="keep tag calls' inputs as suggest_labels' pool")


class ListDatasetsBody(_Body):
    pass


class CreateTagBody(DatasetBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"dataset": "iran", "title": "New Place"}]})

    title: TitleText


class UpdateTagBody(_Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"dataset": "iran", "tag_id": 111111111, "title": "Old Place", "active": True},
                {"tag_id": 111111111, "threshold": 0.8},
                {"tag_id": 111111111, "threshold": None},
            ]
        }
    )

    dataset: Name | None = Field(None, description="when given, must hold the tag")
    tag_id: TagId
    title: TitleText | None = None
    active: bool | None = Field(None, strict=True)
    # Absent leaves the threshold as it is; null resets it to the one the live head learned.
    threshold: float | None = Field(
        None, gt=0, lt=1, allow_inf_nan=False, strict=True,
        description="a probability in (0, 1) that overrides the learned threshold; null: the learned one again",
    )


class DeleteTagBody(_Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{"tag_id": 111111111}]})

    tag_id: TagId


class TextReport(_Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"content": "پیشنهاد میکنم از این بخرید خیلی عالیه.", "tag_id": 39, "positive": True},
            ]
        }
    )

    content: Text
    tag_id: TagId
    positive: bool = Field(strict=True)


class ImageReport(_Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "image_url": "https://upload.wikimedia.org/wikipedia/fa/thumb/5/54/Tehran-Milad_Tower2.jpg/"
                    "800px-Tehran-Milad_Tower2.jpg",
                    "tag_id": 3,
                    "positive": True,
                },
            ]
        }
    )

    image_url: Text
    tag_id: TagId
    positive: bool = Field(strict=True)


class ItemReport(_Body):
    """A label on an item already stored, by its id (from list_items, suggest_labels, search or a report's answer)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"item_id": 1211593, "tag_id": 3, "positive": True}]})

    item_id: TagId = Field(description="a data item's id (the `id` of a report's answer)")
    tag_id: TagId
    positive: bool = Field(strict=True)


# Requests, as the services take them


@dataclass(frozen=True)
class MediaItem:
    """One image or video of a tagging request: a URL, or an uploaded file (``name`` is its file name)."""

    name: str
    ref: MediaInput
    uploaded: bool = False


class VideoJobBody(BaseModel):
    model_config = ConfigDict(
        extra="ignore", json_schema_extra={"examples": [{"job_id": "vj0f6c1a9e5b7d4c2e8a3b1f0d9c7e5a42"}]}
    )

    job_id: Text = Field(min_length=1, max_length=100)


# Responses


def _none(value: object) -> bool:
    return value is None


Absent = Field(None, exclude_if=_none)
Percent = int | float | None  # as the trainer stored it: 87 stays 87, 86.0 stays 86.0


class TagOut(BaseModel):
    id: int
    probability: int | float  # 1 and 0.99 both occur, as in the reference
    title: str


class TextTagsOut(BaseModel):
    content: str
    tags: list[TagOut]
    error: str | None = Absent


class ImageTagsOut(BaseModel):
    """Named by image_url or, for an upload, image_file."""

    image_url: str | None = Absent
    image_file: str | None = Absent
    error: str | None = Absent
    tags: list[TagOut]


class FrameOut(BaseModel):
    frame: int
    time: str
    tags: list[TagOut]


class VideoTagsOut(BaseModel):
    """Named by video_url or, for an upload, video_file."""

    video_url: str | None = Absent
    video_file: str | None = Absent
    error: str | None = Absent
    frames: list[FrameOut]


class VideoJobQueued(BaseModel):
    job_id: str
    state: str


class ErrorOut(BaseModel):
    error: str
    detail: str


class VideoJobOut(BaseModel):
    """``result`` has the synchronous tag_video_frames answer's shape once ``state`` is done."""

    job_id: str
    state: str
    result: list[VideoTagsOut] | None
    error: ErrorOut | None


class TrainOut(BaseModel):
    dataset: str
    state: str


class DatasetEvaluation(BaseModel):
    recall: Percent
    precision: Percent


class TagEvaluation(DatasetEvaluation):
    f1: Percent


HeadMode = Annotated[Literal["trained", "zero_shot"], Field(
    description="trained: fitted from reports; zero_shot: from the tag titles alone (a text dataset with no "
                "positive report yet), until reports train it")]


class TagInfo(BaseModel):
    title: str
    id: int
    reports: int
    predictions: int
    evaluation: TagEvaluation | None
    threshold: float | None = Field(None, description="in force: update_tag's override, else the learned one")


class TagCounts(BaseModel):
    tp: int
    fp: int
    fn: int
    tn: int


class Confusion(BaseModel):
    """A fit's out-of-fold confusion counts on the reports it was fitted from (the figures' cross-validation)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"exclusive": True, "tag_ids": [3, 4], "matrix": [[7, 1, 0], [0, 8, 1], [1, 0, 2]]},
        {"exclusive": False, "tag_ids": [3, 4], "counts": [{"tp": 7, "fp": 1, "fn": 2, "tn": 30}, None]},
    ]})

    exclusive: bool = Field(description="true: at most one tag per item, the counts are a matrix")
    tag_ids: list[int] = Field(description="the head's tags, in the order of the rows and columns (or counts)")
    matrix: list[list[int]] | None = Field(None, exclude_if=_none, description=(
        "exclusive heads: (tags + 1) x (tags + 1); row i: items whose true tag is tag_ids[i], last row: items "
        "reported negative only (no tag); column j: items answered with tag_ids[j], last column: unknown"))
    counts: list[TagCounts | None] | None = Field(None, exclude_if=_none, description=(
        "other heads: per tag of tag_ids, at its cross-validated threshold; null: too few reports to evaluate"))


class DatasetInfoOut(BaseModel):
    title: str
    state: str
    report_count: int
    data_count: int
    evaluation: DatasetEvaluation | None
    tags: list[TagInfo] | None = Absent
    version: int | None = Field(None, description="the live head version; null before the first fit")
    suggestions: int = 0  # open suggest_labels suggestions (not reported since they were computed)
    confusion: Confusion | None = Field(None, description="the live version's; null before the first fit")
    mode: HeadMode | None = Field(None, description="how the live head was made; null before the first fit")


class DatasetOut(BaseModel):
    dataset: str
    title: str
    kind: str | None
    state: str
    keep_inputs: bool = False


class TagOutFull(BaseModel):
    title: str
    tag_id: TagId
    active: bool


class DeleteTagOut(BaseModel):
    dataset: str
    deleted_reports: int


class ReportOut(BaseModel):
    report: str
    id: int


# ---------------------------------------------------------------------------------------------------------
# Webhooks (issue 13): create_webhook, list_webhooks, delete_webhook.

WebhookEvent = Literal["training.finished", "training.failed"]
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("training.finished", "training.failed")
WebhookId = TagId  # the same bigint bounds as every other id
# http(s) only and no private address: checked by the service (400), which names the rule broken.
WebhookUrl = Annotated[str, Field(min_length=1, max_length=2048, json_schema_extra=NO_NUL)]


class CreateWebhookBody(_Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"url": "https://hooks.example.com/kashf", "dataset": "iran"},
                {"url": "https://hooks.example.com/kashf", "events": ["training.failed"]},
            ]
        }
    )

    url: WebhookUrl = Field(description="http or https URL the events are POSTed to (public hosts, ports 80/443)")
    dataset: Name | None = Field(None, description="only this dataset's events; all of the account's when absent")
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(WEBHOOK_EVENTS), json_schema_extra=NON_EMPTY,
        description="training.finished (a fit went live or was held) and/or training.failed",
    )


class ListWebhooksBody(_Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{}]})


class DeleteWebhookBody(_Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{"id": 7}]})

    id: WebhookId


class WebhookCreatedOut(BaseModel):
    """``secret`` signs every delivery (``Kashf-Signature``); it is shown here only, never again."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"id": 7, "url": "https://hooks.example.com/kashf", "events": ["training.finished", "training.failed"],
                 "secret": "whsec_2b9c0f1e6a4d8b7c3e5f9a1d0c2b4e6f8a0c2e4b6d8f0a1c"},
            ]
        }
    )

    id: int
    url: str
    events: list[str]
    secret: str


class WebhookDeliveryOut(BaseModel):
    """The latest delivery: pending (being retried), delivered (a 2xx answer) or failed (given up)."""

    event: str
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    at: datetime


class WebhookOut(BaseModel):
    id: int
    url: str
    dataset: str | None
    events: list[str]
    created: datetime
    last_delivery: WebhookDeliveryOut | None


class DeleteWebhookOut(BaseModel):
    id: int
    deleted: bool


# What to label next and similar items (suggest_labels, search, update_dataset): issue 14


class UpdateDatasetBody(DatasetBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"dataset": "digikala", "title": "نظرات", "keep_inputs": True}]}
    )

    title: TitleText | None = Field(None, description="absent: unchanged")
    keep_inputs: bool | None = Field(None, strict=True, description="absent: unchanged")


class SuggestLabelsBody(DatasetBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"dataset": "digikala", "tag_id": 39, "limit": 20}]}
    )

    tag_id: TagId | None = Field(None, description="only this tag's suggestions")
    limit: int = Field(20, ge=1, le=500)


class SuggestionOut(BaseModel):
    item_id: int
    content: str | None = Absent
    image: str | None = Absent  # /api/items/<id>/image
    reason: Literal["uncertain", "suspect"]
    tag_id: int
    probability: int | float


class SearchBody(DatasetBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"dataset": "digikala", "text": "ارسال خیلی طول کشید", "limit": 10},
                {"dataset": "iran", "image_url": "https://media.mehrnews.com/d/2016/08/13/4/2171627.jpg"},
            ]
        }
    )

    text: Text | None = Field(None, description="a text dataset's query (exactly one of text and image_url)")
    image_url: Text | None = Field(None, description="an image dataset's query, fetched like tag_image_urls")
    limit: int = Field(10, ge=1, le=100)

    @model_validator(mode="after")
    def _one_query(self) -> SearchBody:
        if (self.text is None) == (self.image_url is None):
            raise ValueError("give exactly one of text and image_url")
        return self


class SearchHitOut(BaseModel):
    item_id: int
    score: float  # cosine similarity to the query, rounded to 4 decimals
    content: str | None = Absent
    image: str | None = Absent
    reports: list[tuple[int, bool]]  # [[tag_id, positive], ...]


# ---------------------------------------------------------------------------------------------------------
# Browsing and undo (issue 13): report_image_tags by upload, list_items, the kept image, delete_report.

ItemId = TagId  # the same bigint bounds as every other id


class ImageFileReport(_Body):
    """The form fields of a multipart report_image_tags (the files are ``image_file`` parts)."""

    tag_id: TagId
    positive: bool = Field(True, strict=True, description="true/false (a form also takes 1/0)")
    dataset: Name | None = Field(None, description="when given, must hold the tag (the tag decides the dataset)")


@dataclass(frozen=True)
class RejectedFile:
    """An uploaded file refused before any model saw it (over the size limit); reported as its own error."""

    name: str
    error: str


class ListItemsBody(DatasetBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"dataset": "iran", "limit": 50},
                {"dataset": "iran", "tag_id": 3, "limit": 20, "cursor": "azE6MTIxMTU5Mw"},
            ]
        }
    )

    tag_id: TagId | None = Field(None, description="only items with a report (either sign) of this tag")
    limit: int = Field(50, ge=1, le=500, strict=True, description="items per page, newest first")
    cursor: Text | None = Field(None, max_length=200, description="next_cursor of the previous page")


class DeleteReportBody(_Body):
    """A report by its id, or by the item and tag it labels (report responses name the item id)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"id": 5821}, {"item_id": 1211593, "tag_id": 3}]}
    )

    id: TagId | None = Field(None, description="the report's id (report_ids in list_items)")
    item_id: ItemId | None = Field(None, description="with tag_id, in place of id")
    tag_id: TagId | None = Field(None, description="with item_id, in place of id")

    @model_validator(mode="after")
    def _one_way(self) -> DeleteReportBody:
        by_pair = self.item_id is not None or self.tag_id is not None
        if (self.id is None) == (not by_pair) or (by_pair and (self.item_id is None or self.tag_id is None)):
            raise ValueError("give either id, or both item_id and tag_id")
        return self


class ReportFileOut(BaseModel):
    """One uploaded file of a multipart report: the usual report, or the file's own error."""

    report: str | None = Absent
    id: int | None = Absent
    image_file: str
    error: str | None = Absent


class ItemOut(BaseModel):
    id: int
    content: str | None = Absent
    image: str | None = Field(None, exclude_if=_none, description="GET this path for the kept copy (JPEG)")
    reports: list[tuple[int, bool]] = Field(description="[tag_id, positive] per label, by tag id")
    report_ids: list[int] = Field(description="the report id of each label, in the order of reports")
    created: str = Field(description="when the item was first stored, ISO 8601")


class ListItemsOut(BaseModel):
    items: list[ItemOut]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last page")


class DeleteReportOut(BaseModel):
    id: int
    deleted: Literal[True] = True


# ---------------------------------------------------------------------------------------------------------
# Head versions and thresholds (issue 13): train_dataset's force, list_versions, use_version. The threshold,
# top_k and min_probability fields are on UpdateTagBody, TagOptions, TagInfo and DatasetInfoOut above.


class TrainBody(DatasetBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"dataset": "iran"}, {"dataset": "iran", "force": True}]})

    force: bool = Field(
        False, strict=True, description="refit even if nothing changed, and make the fit live past the promotion gate"
    )


class TagImagesForm(DatasetBody, TagOptions):
    """The form fields of a multipart tag_images (the files are ``image_file`` parts)."""


class ListVersionsBody(DatasetBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"dataset": "iran"}]})


class UseVersionBody(DatasetBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"dataset": "iran", "version": 1}]})

    version: int = Field(ge=1, le=2**31 - 1, strict=True, description="a version list_versions shows")


class VersionOut(BaseModel):
    version: int
    created: str = Field(description="when the version was fitted, ISO 8601")
    state: Literal["live", "kept", "held"] = Field(
        description="live: answers the tag calls; held: lost the promotion gate; kept: an older version"
    )
    report_count: int
    evaluation: TagEvaluation | None = Field(description="cross-validated, percent (as dataset_info)")
    confusion: Confusion | None = Field(None, description="this version's, as dataset_info's")
    mode: HeadMode = "trained"
    pseudo_labels: int = Field(0, description="unlabelled kept inputs (keep_inputs) that joined this fit as "
                                              "examples of the tag it answered for them with most confidence "
                                              "(self-training); the figures come from the reports alone")


# ---------------------------------------------------------------------------------------------------------
# Export (issue 13): export_dataset answers a zip (gateway.routes.export documents it), so only a body here.


class ExportDatasetBody(DatasetBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"dataset": "digikala"}]})
