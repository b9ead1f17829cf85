"""ONNX Runtime sessions with explicit providers and options."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import onnxruntime as ort

from shared.errors import Unavailable

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
