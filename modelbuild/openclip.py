"""Export an open_clip checkpoint: image tower, and text tower with a `tokenizers` tokenizer when present."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelbuild.export import export_image_model
from modelbuild.sources import installed_version
from modelkit.onnx.manifest import ImagePreprocessing, ModelManifest, SourcePackage

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

# open_clip's SimpleTokenizer split pattern, without its special-token alternatives
_CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_CHECK_TEXTS = ["a photo of a cat", "Two dogs playing in the SNOW!", "قهوه در فنجان سفید", "x" * 400]


def _import_open_clip() -> Any:
    try:
        import open_clip
    except Exception as exc:  # torchvision/torch mismatches surface as RuntimeError, not ImportError
        raise RuntimeError(f"open_clip cannot be imported here: {exc}") from exc
    return open_clip


def _clip_bpe_tokenizer(simple: Any) -> Tokenizer:
    """open_clip's SimpleTokenizer as a `tokenizers` byte-level BPE (lowercased, whitespace-collapsed)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

    merges = [pair for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda kv: kv[1])]
    bpe = models.BPE(vocab=dict(simple.encoder), merges=merges, end_of_word_suffix="</w>")
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.NFC(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
            normalizers.Lowercase(),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    sot, eot = "<start_of_text>", "<end_of_text>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{sot} $A {eot}", special_tokens=[(sot, simple.encoder[sot]), (eot, simple.encoder[eot])]
    )
    return tok


def _text_tokenizer(oc_tok: Any) -> tuple[Tokenizer, int]:
    """A `tokenizers` equivalent of open_clip's tokenizer object, and its pad id."""
    from tokenizers import Tokenizer, normalizers

    hf = getattr(oc_tok, "tokenizer", None)
    if hf is not None and getattr(hf, "backend_tokenizer", None) is not None:
        tok = Tokenizer.from_str(hf.backend_tokenizer.to_str())
        if "lower" in getattr(getattr(oc_tok, "clean_fn", None), "__name__", ""):
            steps = [normalizers.Lowercase()] + ([tok.normalizer] if tok.normalizer is not None else [])
            tok.normalizer = normalizers.Sequence(steps)
        return tok, int(hf.pad_token_id or 0)
    if hasattr(oc_tok, "bpe_ranks") and hasattr(oc_tok, "encoder"):
        return _clip_bpe_tokenizer(oc_tok), 0
    raise RuntimeError(f"unsupported open_clip tokenizer {type(oc_tok).__name__}")


def _check_tokenizer(tok: Tokenizer, oc_tok: Any, context_length: int, pad_id: int) -> None:
    tok.enable_truncation(max_length=context_length)
    tok.enable_padding(pad_id=pad_id, length=context_length)
    expected = oc_tok(_CHECK_TEXTS, context_length=context_length).tolist()
    got = [e.ids for e in tok.encode_batch(_CHECK_TEXTS)]
    if got != expected:
        raise RuntimeError("rebuilt text tokenizer disagrees with open_clip's on the check sentences")
    tok.no_padding()
    tok.no_truncation()


LOCAL_DIR = "local-dir:"


def local_dir(model_name: str) -> Path | None:
    """The folder of a ``local-dir:PATH`` model (open_clip_config.json and weights, as open_clip publishes)."""
    return Path(model_name[len(LOCAL_DIR):]) if model_name.startswith(LOCAL_DIR) else None


def _load(open_clip: Any, model_name: str, checkpoint: Path | None) -> Any:
    """The model with its weights from local files, never a hub; no weights found is an error, not a random model."""
    folder = local_dir(model_name)
    if folder is not None:
        if checkpoint is not None:
            raise RuntimeError("a local-dir: model takes its weights from its folder: drop --checkpoint")
        if not (folder / "open_clip_config.json").is_file():
            raise FileNotFoundError(f"{folder}: no open_clip_config.json")
        return open_clip.create_model(model_name, require_pretrained=True)
    if checkpoint is None:
        raise RuntimeError(f"{model_name}: give the weights with --checkpoint (or a local-dir: folder)")
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} not found")
    return open_clip.create_model(model_name, pretrained=str(checkpoint), require_pretrained=True)


def export_openclip(
    model_name: str, checkpoint: Path | None, out_dir: Path, *, name: str, build_key: str, step: Any = None
) -> ModelManifest:
    """Load `model_name` (an architecture with weights from the local `checkpoint`, or a ``local-dir:`` folder)
    and export both towers."""
    import torch

    open_clip = _import_open_clip()
    model = _load(open_clip, model_name, checkpoint)
    model.eval()
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    size = int(size[0] if isinstance(size, tuple | list) else size)
    mean = [255.0 * float(v) for v in cfg.get("mean", getattr(model.visual, "image_mean", (0.5,) * 3))]
    std = [255.0 * float(v) for v in cfg.get("std", getattr(model.visual, "image_std", (0.5,) * 3))]
    pre = ImagePreprocessing(
        resize_mode="squash" if cfg.get("resize_mode") == "squash" else "shortest",
        resize_shorter=size, crop=size,
        interpolation="bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic",
        mean=(mean[0], mean[1], mean[2]), std=(std[0], std[1], std[2]),
    )

    class Image(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.m.encode_image(pixels, normalize=True)  # type: ignore[no-any-return]

    class Text(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, text: torch.Tensor) -> torch.Tensor:
            return self.m.encode_text(text, normalize=True)  # type: ignore[no-any-return]

    tower: tuple[torch.nn.Module, Path, int, int] | None = None
    if hasattr(model, "encode_text"):
        oc_tok = open_clip.get_tokenizer(model_name)
        ctx: Any = getattr(model, "context_length", None) or getattr(oc_tok, "context_length", None) or 77
        context_length = int(ctx)
        tok, pad_id = _text_tokenizer(oc_tok)
        _check_tokenizer(tok, oc_tok, context_length, pad_id)
        out_dir.mkdir(parents=True, exist_ok=True)
        tok_path = out_dir / "text_tokenizer.src.json"
        tok.save(str(tok_path))
        tower = (Text().eval(), tok_path, context_length, pad_id)
    version = installed_version("open_clip_torch") or "unknown"
    weights = checkpoint.name if checkpoint is not None else (local_dir(model_name) or Path()).name
    manifest = export_image_model(
        Image().eval(), out_dir, name=name, preprocessing=pre,
        sources=[SourcePackage(package="open_clip_torch", version=version),
                 SourcePackage(package=f"checkpoint:{weights}", version=model_name)],
        build_key=build_key, output_names=["embedding"], text_tower=tower, step=step,
    )
    if tower is not None:
        tower[1].unlink(missing_ok=True)
    return manifest
