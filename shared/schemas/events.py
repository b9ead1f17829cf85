"""JetStream events the trainer consumes, and the broadcast that datasets changed."""

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
    # retrain: refit even if nothing changed (kashf-admin retrain-all); requeued: by the trainer's stall sweeper;
    # titles: a tag of a dataset tagged from its tag titles changed (debounced like a report).
    reason: Literal["api", "reports", "model_change", "retrain", "requeued", "titles"] = "api"
    request_id: str = ""
    # train_dataset {"force": true}: refit even if nothing changed and make the fit live past the promotion gate.
    force: bool = False


class DatasetsChanged(Message):
    """Core NATS broadcast on ``DATASETS_CHANGED``: drop cached state of these datasets."""

    dataset_ids: list[int]
    origin: str = ""  # the sender's instance id: a gateway has already applied its own change
