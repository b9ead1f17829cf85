"""One way to open a model folder for both encoders: the modality is checked, the id names the weights."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modelkit.onnx.image import ImageEncoder
from modelkit.onnx.session import open_model
from modelkit.onnx.text import TextEncoder
from shared.errors import InvalidInput

pytestmark = pytest.mark.models


def test_a_folder_of_the_other_modality_is_refused_in_one_sentence(text_model_dir: Path,
                                                                   image_model_dir: Path) -> None:
    with pytest.raises(InvalidInput, match="holds a text model, not an image model"):
        ImageEncoder(text_model_dir, device="cpu")
    with pytest.raises(InvalidInput, match="holds a image model, not a text model"):
        TextEncoder(image_model_dir, device="cpu")


def test_the_model_id_names_the_file_that_runs(text_model_dir: Path) -> None:
    opened = open_model(text_model_dir, "text", "cpu", threads=1)
    file = opened.manifest.file_for(False)
    assert re.fullmatch(rf"{re.escape(opened.manifest.name)}@[0-9a-f]{{12}}", opened.model_id)
    assert opened.model_id.endswith(opened.manifest.files[file][:12])
    assert opened.device == "cpu" and TextEncoder(text_model_dir, device="cpu").model_id == opened.model_id
