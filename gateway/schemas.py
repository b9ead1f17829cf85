"""The public API's request and response bodies, with the reference's examples for /docs.

List lengths and text lengths are not constrained here: those limits are settings, answered with
413 naming the setting by the service layer, not 422.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DatasetName = Field(min_length=1, max_length=200, description="the dataset's name, unique per account")
Title = Field(min_length=1, max_length=500)


# Ids are Postgres bigints: anything outside is a schema error (422), not a database error.
TagId = Annotated[int, Field(ge=0, le=2**63 - 1)]


def _nul_path(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if (found := _nul_path(item, f"{path}.{key}" if path else str(key))) is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            if (found := _nul_path(item, f"{path}[{i}]")) is not None:
                return found
    return None


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        # Postgres text cannot hold NUL: refuse it here, naming the field, rather than fail later.
        if (path := _nul_path(data, "")) is not None:
            raise ValueError(f"{path} contains a NUL character (\\u0000)")
        return data


# Requests


class TagTextsBody(_Body):
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
            ]
        }
    )

    dataset: str = DatasetName
    contents: list[str]


class TagImagesBody(_Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"dataset": "iran", "image_urls": ["https://media.mehrnews.com/d/2016/08/13/4/2171627.jpg"]},
            ]
        }
    )

    dataset: str = DatasetName
    image_urls: list[str]


class VideoParams(_Body):
    dataset: str = DatasetName
    every_ms: int = Field(
        1000, le=86_400_000, description="sample one frame every this many milliseconds of video time"
    )
    duration: float | None = Field(
        None, description="analyse only the first seconds; absent or 0: whole video"
    )
    min_frame_diff: float = Field(
        0, description="mean absolute difference (0-255) to the last analysed frame"
    )
    async_: bool = Field(
        False, alias="async",
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

    video_urls: list[str]


class DatasetBody(_Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{"dataset": "iran"}]})

    dataset: str = DatasetName


class DatasetInfoBody(DatasetBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"dataset": "iran", "tags": True}]})

    tags: bool = True


class CreateDatasetBody(DatasetBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"dataset": "iran", "title": "لحظه", "kind": "image"}]}
    )

    title: str | None = Field(None, min_length=1, max_length=500, description="defaults to the name")
    kind: Literal["text", "image"] | None = Field(
        None, description="absent: fixed by the first report or tagging"
    )


class ListDatasetsBody(_Body):
    pass


class CreateTagBody(DatasetBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"dataset": "iran", "title": "New Place"}]})

    title: str = Title


class UpdateTagBody(_Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"dataset": "iran", "tag_id": 111111111, "title": "Old Place", "active": True},
            ]
        }
    )

    dataset: str | None = Field(
        None, min_length=1, max_length=200, description="when given, must hold the tag"
    )
    tag_id: TagId
    title: str | None = Field(None, min_length=1, max_length=500)
    active: bool | None = None


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

    content: str
    tag_id: TagId
    positive: bool


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

    image_url: str
    tag_id: TagId
    positive: bool


# Responses


class TagOut(BaseModel):
    id: int
    probability: int | float  # 1 and 0.99 both occur, as in the reference
    title: str


class TextTagsOut(BaseModel):
    content: str
    tags: list[TagOut]
    error: str | None = None


class ImageTagsOut(BaseModel):
    image_url: str | None = None
    image_file: str | None = None
    tags: list[TagOut]
    error: str | None = None


class FrameOut(BaseModel):
    frame: int
    time: str
    tags: list[TagOut]


class VideoTagsOut(BaseModel):
    video_url: str | None = None
    video_file: str | None = None
    frames: list[FrameOut]
    error: str | None = None


class TrainOut(BaseModel):
    dataset: str
    state: str


class DatasetEvaluation(BaseModel):
    recall: float | None
    precision: float | None


class TagEvaluation(DatasetEvaluation):
    f1: float | None


class TagInfo(BaseModel):
    title: str
    id: int
    reports: int
    predictions: int
    evaluation: TagEvaluation | None


class DatasetInfoOut(BaseModel):
    title: str
    state: str
    report_count: int
    data_count: int
    evaluation: DatasetEvaluation | None
    tags: list[TagInfo] | None = None


class DatasetOut(BaseModel):
    dataset: str
    title: str
    kind: str | None
    state: str


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
