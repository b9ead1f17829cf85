"""JetStream events the trainer consumes."""

from __future__ import annotations

from typing import Literal

from shared.schemas.base import Message


class ReportEvent(Message):
    dataset_id: int
    item_id: int
    tag_id: int
    positive: bool
    report_id: int


class TrainRequest(Message):
    dataset_id: int
    reason: Literal["api", "reports", "model_change"] = "api"
    request_id: str = ""
