"""Text encoder over an ONNX sentence-embedding model: tokenise, run, L2-normalise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from modelkit.onnx.manifest import TextPreprocessing
from modelkit.onnx.session import Device, open_model
from shared.errors import InvalidInput

# Rows per session.run. On the CPU, beyond 32 the padded batch only costs memory; a GPU keeps gaining up to
# a few hundred rows (the batch the dynamic batcher hands it is KASHF_MAX_BATCH).
_CHUNK = {"cpu": 32, "cuda": 256}


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


class TextEncoder:
    """Embeds texts with the manifest's prefix and tokenizer; rows are unit length float32."""

    def __init__(self, model_dir: Path, device: Device = "auto", threads: int | None = None) -> None:
        opened = open_model(model_dir, "text", device, threads)
        self.manifest, self.device, self.session, self.model_id = (
            opened.manifest, opened.device, opened.session, opened.model_id)
        pre = self.manifest.preprocessing
        if not isinstance(pre, TextPreprocessing):
            raise InvalidInput(f"{model_dir}: a text model needs text preprocessing in its manifest")
        self.pre: TextPreprocessing = pre
        self.dim = self.manifest.dim
        self._input_names = [i.name for i in self.session.get_inputs()]
        self._output = self.manifest.outputs[0]
        self._tok = Tokenizer.from_file(str(model_dir / pre.tokenizer))
        self._tok.enable_truncation(max_length=pre.max_length)
        self._tok.enable_padding(pad_id=pre.pad_id, pad_token=self._tok.id_to_token(pre.pad_id) or "<pad>")

    def encode_pre(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Prefix, tokenise, truncate to max_length and pad to the batch's longest text."""
        enc = self._tok.encode_batch([self.pre.prefix + t for t in texts])
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return {k: v for k, v in feeds.items() if k in self._input_names}

    def encode_core(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        out = self.session.run([self._output], batch)[0]
        return np.asarray(out, dtype=np.float32)

    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32 unit rows; texts run in length-sorted chunks to waste little on padding."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        chunk = _CHUNK[self.device]
        for start in range(0, len(order), chunk):
            idx = order[start : start + chunk]
            out[idx] = self.encode_core(self.encode_pre([texts[i] for i in idx]))
        return l2_normalise(out)

    def warmup(self) -> None:
        self.encode(["warm up", "گرم کردن مدل"])
