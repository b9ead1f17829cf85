"""ONNX Runtime sessions with explicit providers and options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from modelkit.onnx.manifest import ModelManifest, load_manifest
from shared.errors import InvalidInput, Unavailable

Device = Literal["auto", "cpu", "cuda"]
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def cuda_available() -> bool:
    return _CUDA in ort.get_available_providers()


def resolve_device(device: Device) -> Literal["cpu", "cuda"]:
    """`auto` takes CUDA when this onnxruntime build has it; asking for CUDA without it is an error."""
    if device == "cuda" and not cuda_available():
        raise Unavailable(
            "KASHF_DEVICE=cuda but onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
        )
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


def make_session(path: Path, device: Device = "auto", threads: int | None = None) -> ort.InferenceSession:
    """One session for `path`: CUDA first when resolved to it (CPU stays as fallback for unsupported ops)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle model threads sleep instead of spinning: a service shares its cores with the decoding pool,
    # the bus client and (on small nodes) other services, and spinning burns the CPU quota between requests.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    providers: list[str | tuple[str, dict[str, str]]] = [_CPU]
    if resolve_device(device) == "cuda":
        providers = [(_CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}), _CPU]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


@dataclass(frozen=True)
class OpenedModel:
    """A model folder opened for inference: its manifest, the device chosen, the session and its id."""

    manifest: ModelManifest
    device: Literal["cpu", "cuda"]
    session: ort.InferenceSession
    model_id: str  # "<name>@<first 12 hex of the file's sha256>": changes whenever the weights do


def open_model(model_dir: Path, modality: str, device: Device = "auto", threads: int | None = None) -> OpenedModel:
    """Load the manifest, check it holds a ``modality`` model, and open the file for the device."""
    manifest = load_manifest(model_dir)
    if manifest.modality != modality:
        article = "an" if modality[0] in "aeiou" else "a"
        raise InvalidInput(f"{model_dir} holds a {manifest.modality} model, not {article} {modality} model")
    chosen = resolve_device(device)
    file = manifest.file_for(chosen == "cuda")
    session = make_session(model_dir / file, chosen, threads)
    return OpenedModel(manifest, chosen, session, f"{manifest.name}@{manifest.files.get(file, '')[:12]}")
