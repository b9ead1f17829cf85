"""export_dataset: the zip of a dataset's tagger (fused ONNX model, kashf.json, tokenizer), streamed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from gateway.deps import AccountDep, StateDep
from gateway.routes.common import _ERRORS_DOC, api_router
from gateway.schemas import ExportDatasetBody
from gateway.service import export

_ZIP_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "`application/zip` named `<dataset>-v<version>.zip`: `model.onnx` (the encoder and the live head in "
            "one graph; output `probabilities` (n, tags) float32), `kashf.json` (tags in column order with their "
            "thresholds in force, exclusive flag, preprocessing, model id, version) and, for text, "
            "`tokenizer.json` and `normalize.py`"
        ),
        "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
    },
    **{status: doc for status, doc in _ERRORS_DOC.items() if status != 413},
}


async def export_dataset(body: ExportDatasetBody, account: AccountDep, state: StateDep) -> StreamingResponse:
    package = await export.export_dataset(state, account, body.dataset)
    return StreamingResponse(package.chunks(), media_type="application/zip", headers={
        "Content-Disposition": package.content_disposition(), "Content-Length": str(package.size)})


def router() -> APIRouter:
    r = api_router()
    summary = "Download the dataset's tagger to run offline with onnxruntime (400 before its first training)"
    common: dict[str, Any] = {"methods": ["POST"], "response_model": None, "response_class": StreamingResponse}
    r.add_api_route("/api/export_dataset/", export_dataset, summary=summary, responses=_ZIP_DOC, **common)
    r.add_api_route("/api/export_dataset", export_dataset, include_in_schema=False, **common)
    return r
