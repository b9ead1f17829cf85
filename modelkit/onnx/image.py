"""Image encoder over any ONNX image model whose manifest says how to preprocess."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageOps
from tokenizers import Tokenizer

from modelkit.onnx.manifest import ImagePreprocessing
from modelkit.onnx.session import Device, make_session, open_model
from modelkit.onnx.text import l2_normalise
from shared.errors import InvalidInput

_CHUNK = 32
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class ImageModel(Protocol):
    """What the image and video services need of an image model; ``ImageEncoder`` is one."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def has_text_tower(self) -> bool: ...

    def preprocess(self, img: Image.Image) -> np.ndarray: ...

    def encode_batch(self, batch: np.ndarray) -> np.ndarray: ...

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...

    def warmup(self) -> None: ...


class ImageEncoder:
    """Embeds PIL images (and, for two-tower models, texts) as unit-length float32 rows."""

    def __init__(self, model_dir: Path, device: Device = "auto", threads: int | None = None) -> None:
        opened = open_model(model_dir, "image", device, threads)
        self.manifest, self.device, self.session, self.model_id = (
            opened.manifest, opened.device, opened.session, opened.model_id)
        pre = self.manifest.preprocessing
        if not isinstance(pre, ImagePreprocessing):
            raise InvalidInput(f"{model_dir}: an image model needs image preprocessing in its manifest")
        self.pre: ImagePreprocessing = pre
        self.dim = self.manifest.dim
        self._input = self.session.get_inputs()[0].name
        self._output = self.manifest.outputs[0]
        self._mean = np.array(pre.mean, dtype=np.float32)
        self._inv_std = 1.0 / np.array(pre.std, dtype=np.float32)
        tower = self.manifest.text_tower
        self.has_text_tower = tower is not None
        self._text_session = None
        self._text_tok: Tokenizer | None = None
        if tower is not None:
            self._text_session = make_session(model_dir / tower.file, self.device, threads)
            self._text_tok = Tokenizer.from_file(str(model_dir / tower.tokenizer))
            self._text_tok.enable_truncation(max_length=tower.context_length)
            self._text_tok.enable_padding(pad_id=tower.pad_id, length=tower.context_length)

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """(3, crop, crop) float32: EXIF-upright RGB, resized, centre-cropped, (pixel - mean) / std."""
        p = self.pre
        img = ImageOps.exif_transpose(img).convert("RGB")
        w, h = img.size
        if p.resize_mode == "squash":
            img = img.resize((p.crop, p.crop), _RESAMPLE[p.interpolation])
        else:
            scale = p.resize_shorter / min(w, h)
            nw, nh = max(p.crop, round(w * scale)), max(p.crop, round(h * scale))
            img = img.resize((nw, nh), _RESAMPLE[p.interpolation])
            left, top = (nw - p.crop) // 2, (nh - p.crop) // 2
            img = img.crop((left, top, left + p.crop, top + p.crop))
        arr = (np.asarray(img, dtype=np.float32) - self._mean) * self._inv_std
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def encode_core(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run([self._output], {self._input: batch.astype(np.float32, copy=False)})[0]
        return np.asarray(out, dtype=np.float32)

    def encode_batch(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed (n, 3, crop, crop) pixels -> (n, dim) unit rows, in bounded chunks."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [self.encode_core(batch[i : i + _CHUNK]) for i in range(0, len(batch), _CHUNK)]
        return l2_normalise(np.concatenate(parts))

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_batch(np.stack([self.preprocess(im) for im in images]))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts in the image embedding space; only two-tower models have one."""
        if self._text_session is None or self._text_tok is None or self.manifest.text_tower is None:
            raise InvalidInput(f"image model {self.manifest.name} has no text tower")
        if not texts:
            return np.zeros((0, self.manifest.text_tower.dim), dtype=np.float32)
        ids = np.array([e.ids for e in self._text_tok.encode_batch(texts)], dtype=np.int64)
        name = self.manifest.text_tower.input_name
        out = self._text_session.run(None, {name: ids})[0]
        return l2_normalise(np.asarray(out, dtype=np.float32))

    def warmup(self) -> None:
        size = self.pre.crop
        self.encode_core(np.zeros((1, 3, size, size), dtype=np.float32))
        if self.has_text_tower:
            self.encode_texts(["a photo"])
