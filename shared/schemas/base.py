"""Base of every message: frozen, and tolerant of fields added by newer producers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
