"""The `manifest.json` beside every built model: what the files are and how to feed them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import Unavailable

MANIFEST_NAME = "manifest.json"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class TextPreprocessing(_Frozen):
    kind: Literal["text"] = "text"
    prefix: str = ""
    max_length: int = 512
    tokenizer: str = "tokenizer.json"
    pad_id: int = 0


class ImagePreprocessing(_Frozen):
    """Resize the shorter side, centre-crop, then (pixel - mean) / std per channel, pixels in 0..255."""

    kind: Literal["image"] = "image"
    resize_mode: Literal["shortest", "squash"] = "shortest"  # squash: straight to crop x crop
    resize_shorter: int = 256
    crop: int = 224
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    color: Literal["RGB"] = "RGB"
    layout: Literal["NCHW"] = "NCHW"


Preprocessing = Annotated[TextPreprocessing | ImagePreprocessing, Field(discriminator="kind")]


class SourcePackage(_Frozen):
    package: str
    version: str


class TextTower(_Frozen):
    """Text side of a two-tower (CLIP-style) image model: embeds tag titles in the image space."""

    file: str
    tokenizer: str
    context_length: int
    dim: int
    pad_id: int = 0
    input_name: str = "text"


class ModelManifest(_Frozen):
    schema_version: int = 1
    name: str
    modality: Literal["text", "image"]
    dim: int
    preprocessing: Preprocessing
    opset: int
    files: dict[str, str]  # file name -> sha256
    sources: list[SourcePackage] = []
    cpu_file: str
    gpu_file: str
    inputs: list[str]
    outputs: list[str]
    text_tower: TextTower | None = None
    reference: str | None = None  # folder of torch-side references the tests compare against
    build_key: str = ""

    def file_for(self, use_gpu: bool) -> str:
        return self.gpu_file if use_gpu else self.cpu_file


def load_manifest(model_dir: Path) -> ModelManifest:
    """Read `model_dir/manifest.json`; a missing model is Unavailable with the command that builds it."""
    path = model_dir / MANIFEST_NAME
    if not path.is_file():
        raise Unavailable(
            f"no model manifest at {path}: run `make models` (python -m modelbuild build)"
        )
    return ModelManifest.model_validate_json(path.read_bytes())
