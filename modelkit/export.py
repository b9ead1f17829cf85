"""A dataset's tagger as one file set a user runs offline: the encoder and the live head fused into one ONNX
graph (``model.onnx``), ``kashf.json`` (tags, thresholds, preprocessing) and, for text, the tokenizer.

The fused graph computes what the model service does (``modelkit.onnx.text`` / ``image`` then
``Head.probabilities``): the encoder's embedding, L2-normalised, ``raw = x @ W.T + b``, ``z = a * raw + c``,
then ``sigmoid(z)``, or for an exclusive head ``sigmoid(z_t - max(none_logit, max of the other z))``.
The encoder's own nodes, initialisers, opset imports and IR version are kept as they are; only a tensor that
would clash with the output's name is renamed, and what fed nothing but the dropped outputs is pruned.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nats.errors
import nats.js.errors
import numpy as np
import onnx
import structlog
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

import shared.textnorm
from modelkit.heads import Head
from modelkit.metrics import instrumented
from modelkit.onnx.manifest import ImagePreprocessing, ModelManifest, TextPreprocessing, load_manifest
from modelkit.service import BatchedModelService
from shared.bus import Bus
from shared.errors import BadRequest, Unavailable
from shared.schemas.export import ExportReply, ExportRequest, ExportTag
from shared.subjects import BLOBS_BUCKET, Subject

log = structlog.get_logger(__name__)

OUTPUT = "probabilities"
FORMAT = 1  # of kashf.json
MODEL_FILE = "model.onnx"
META_FILE = "kashf.json"
TOKENIZER_FILE = "tokenizer.json"
NORMALIZER_FILE = "normalize.py"
_EPS = 1e-12  # as modelkit.onnx.text.l2_normalise
_NOT_SELF = -1e30  # added to a tag's own logit when its rivals are maxed (finite: no inf - inf)
_TEXT_INPUTS = ("input_ids", "attention_mask")
_TOKEN_TYPES = "token_type_ids"  # the services feed zeros: the fused graph makes them itself


# ----------------------------------------------------------------------------------------------------------------
# Graph surgery


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name used anywhere in the graph and its subgraphs."""
    names: set[str] = set()
    for g in _graphs(graph):
        names.update(i.name for i in g.input)
        names.update(o.name for o in g.output)
        names.update(v.name for v in g.value_info)
        names.update(t.name for t in g.initializer)
        names.update(t.values.name for t in g.sparse_initializer)
        for node in g.node:
            names.update(node.input)
            names.update(node.output)
            names.add(node.name)
    names.discard("")
    return names


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` everywhere (subgraphs read outer tensors by name, so them too)."""
    for g in _graphs(graph):
        for seq in (g.input, g.output, g.value_info):
            for v in seq:
                if v.name == old:
                    v.name = new
        for t in g.initializer:
            if t.name == old:
                t.name = new
        for node in g.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
            for i, name in enumerate(node.output):
                if name == old:
                    node.output[i] = new


def _consumed(graph: onnx.GraphProto) -> set[str]:
    """Names read by some node of ``graph`` or of its subgraphs (a subgraph may read an outer tensor)."""
    used: set[str] = set()
    for g in _graphs(graph):
        for node in g.node:
            used.update(node.input)
        if g is not graph:
            used.update(o.name for o in g.output)
    return used


def _prune(graph: onnx.GraphProto) -> None:
    """Drop top-level nodes whose outputs nothing reads, then initialisers and value infos nothing reads."""
    while True:
        needed = _consumed(graph) | {o.name for o in graph.output}
        nodes = list(graph.node)
        keep = [n for n in nodes if any(o in needed for o in n.output if o)]
        if len(keep) == len(nodes):
            break
        _replace(graph.node, keep)
    needed = _consumed(graph) | {o.name for o in graph.output}
    inits = [t for t in graph.initializer if t.name in needed]
    if len(inits) != len(graph.initializer):  # copying is the cost: only when something goes
        _replace(graph.initializer, inits)
    produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    _replace(graph.value_info, [v for v in graph.value_info if v.name in produced])


def _replace(field: Any, items: Sequence[Any]) -> None:
    """Set a repeated protobuf field to ``items`` (copies: taken before the field is cleared)."""
    copies = [type(item)() for item in items]
    for copy, item in zip(copies, items, strict=True):
        copy.CopyFrom(item)
    del field[:]
    field.extend(copies)


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ValueError("the encoder imports no default-domain opset")


class _Builder:
    """Appends nodes and initialisers to a graph under names that clash with nothing in it."""

    def __init__(self, graph: onnx.GraphProto, taken: set[str], opset: int) -> None:
        self.graph, self.taken, self.opset = graph, taken, opset
        self._n = 0

    def name(self, hint: str) -> str:
        while True:
            self._n += 1
            candidate = f"kashf_head/{hint}_{self._n}"
            if candidate not in self.taken:
                self.taken.add(candidate)
                return candidate

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str, *, output: str | None = None, **attrs: Any) -> str:
        out = output or self.name(hint)
        self.graph.node.append(helper.make_node(op_type, list(inputs), [out], name=self.name(op_type), **attrs))
        return out

    def reduce_max_last(self, x: str, hint: str) -> str:
        """ReduceMax over axis 2 without keeping it (axes is an attribute before opset 18, an input after)."""
        if self.opset >= 18:
            axes = self.const("axes", np.array([2], dtype=np.int64))
            return self.op("ReduceMax", [x, axes], hint, keepdims=0)
        return self.op("ReduceMax", [x], hint, axes=[2], keepdims=0)


def fuse(encoder: onnx.ModelProto, embedding: str, head: Head) -> onnx.ModelProto:
    """``encoder`` (changed in place and returned) ending in ``head``'s probabilities, output ``probabilities``
    (n, k) float32, columns in ``head.tag_ids`` order; every other output is dropped. A ``token_type_ids``
    input becomes zeros made inside (as the services feed), so a text model takes what the tokenizer gives."""
    graph = encoder.graph
    if embedding not in {o.name for o in graph.output}:
        raise ValueError(f"the encoder has no output {embedding!r}")
    taken = _names(graph)
    if OUTPUT in taken:  # e.g. an image classifier's own "probabilities": ours takes the name
        fresh = f"{OUTPUT}_encoder"
        while fresh in taken:
            fresh += "_"
        _rename(graph, OUTPUT, fresh)
        embedding = fresh if embedding == OUTPUT else embedding
        taken = _names(graph)
    b = _Builder(graph, taken, _opset(encoder))
    _zero_token_types(graph, b)

    out_type = next(o for o in graph.output if o.name == embedding).type.tensor_type.elem_type
    x = embedding
    if out_type != TensorProto.FLOAT:
        x = b.op("Cast", [x], "embedding_f32", to=TensorProto.FLOAT)
    x = b.op("Flatten", [x], "embedding_2d", axis=1)
    dim, k = head.dim, int(head.tag_ids.shape[0])
    # L2 normalisation: the sum of squares as a MatMul by ones (no Reduce*: their axes moved between opsets).
    squares = b.op("Mul", [x, x], "squares")
    norm = b.op("Sqrt", [b.op("MatMul", [squares, b.const("ones", np.ones((dim, 1), np.float32))], "sumsq")], "norm")
    norm = b.op("Max", [norm, b.const("eps", np.array(_EPS, np.float32))], "norm_eps")
    unit = b.op("Div", [x, norm], "unit")
    weights_t = np.ascontiguousarray(head.weights.astype(np.float32).T)
    raw = b.op("Add", [b.op("MatMul", [unit, b.const("weights_t", weights_t)], "xw"),
                       b.const("bias", head.bias.astype(np.float32))], "raw")
    cal = head.calibration.astype(np.float32)
    z = b.op("Add", [b.op("Mul", [raw, b.const("platt_a", np.ascontiguousarray(cal[:, 0]))], "scaled"),
                     b.const("platt_c", np.ascontiguousarray(cal[:, 1]))], "logits")
    if head.exclusive:
        # Row t of (n, k, k) holds every logit with t's own pushed down: its max is t's strongest rival.
        grid = b.op("Reshape", [z, b.const("shape", np.array([-1, 1, k], np.int64))], "logits_row")
        mask = np.where(np.eye(k, dtype=bool), np.float32(_NOT_SELF), np.float32(0.0)).astype(np.float32)
        others = b.reduce_max_last(b.op("Add", [grid, b.const("not_self", mask)], "rivals_grid"), "others")
        rival = b.op("Max", [others, b.const("none_logit", np.array(head.none_logit, np.float32))], "rival")
        z = b.op("Sub", [z, rival], "margin")
    b.op("Sigmoid", [z], OUTPUT, output=OUTPUT)

    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", k]))
    _prune(graph)
    return encoder


def _zero_token_types(graph: onnx.GraphProto, b: _Builder) -> None:
    """Replace a ``token_type_ids`` input by zeros shaped like ``input_ids``, as the text service feeds."""
    inputs = {i.name: i for i in graph.input}
    if _TOKEN_TYPES not in inputs or "input_ids" not in inputs:
        return
    elem = inputs[_TOKEN_TYPES].type.tensor_type.elem_type
    shape = b.op("Shape", ["input_ids"], "ids_shape")
    zero = helper.make_tensor("value", elem, [1], [0])
    b.op("ConstantOfShape", [shape], _TOKEN_TYPES, output=_TOKEN_TYPES, value=zero)
    # The two new nodes read only input_ids: first, they come before every node reading token_type_ids.
    nodes = list(graph.node)
    _replace(graph.node, [*nodes[-2:], *nodes[:-2]])
    _replace(graph.input, [i for i in graph.input if i.name != _TOKEN_TYPES])


# ----------------------------------------------------------------------------------------------------------------
# The package


@dataclass(frozen=True)
class PackageTag:
    """One column of the fused model's output."""

    id: int
    title: str | None  # None: the tag was deleted since the head was fitted
    active: bool  # the API answers active tags only; an inactive column still competes in an exclusive head
    threshold: float  # in force: the tag's override, else the threshold the head learned


def package_tags(head: Head, tags: Iterable[ExportTag]) -> list[PackageTag]:
    """The head's columns in order, with the dataset's titles, active flags and thresholds in force."""
    known = {t.id: t for t in tags}
    out = []
    for j, tag_id in enumerate(head.tag_ids.tolist()):
        tag = known.get(int(tag_id))
        override = tag.threshold_override if tag is not None else None
        out.append(PackageTag(
            id=int(tag_id), title=tag.title if tag is not None else None, active=tag is not None and tag.active,
            threshold=round(float(override if override is not None else head.thresholds[j]), 6),
        ))
    return out


def model_file_for(manifest: ModelManifest, model_id: str) -> str:
    """The manifest's file whose weights ``model_id`` names ("<name>@<sha256 prefix>"): the one being served."""
    _, _, digest = model_id.partition("@")
    for file, sha in manifest.files.items():
        if file.endswith(".onnx") and digest and sha.startswith(digest) and model_id.startswith(manifest.name + "@"):
            return file
    raise Unavailable(f"model {model_id} is not among the files of {manifest.name}: cannot export it")


def _preprocessing(manifest: ModelManifest) -> dict[str, Any]:
    pre = manifest.preprocessing
    if isinstance(pre, TextPreprocessing):
        return {"kind": "text", "normalize": f"{NORMALIZER_FILE}: normalize_text(text), before the prefix",
                "prefix": pre.prefix, "tokenizer": TOKENIZER_FILE, "max_length": pre.max_length,
                "pad_id": pre.pad_id, "truncation_and_padding": f"set in {TOKENIZER_FILE}"}
    assert isinstance(pre, ImagePreprocessing)
    # How vision_service decodes before this (vision_service.decode, which modelkit may not import: its unit test
    # checks these words against it): a JPEG far larger than the model needs is decoded at reduced scale.
    needed = pre.crop if pre.resize_mode == "squash" else pre.resize_shorter
    decode = {"frame": "the first", "exif_transpose": True, "alpha": "composited on white, then RGB",
              "jpeg_draft": {"when_shorter_side_at_least": 4 * needed, "pil_draft": ["RGB", [2 * needed, 2 * needed]],
                             "note": "Image.draft(*pil_draft) before loading a JPEG that large (reduced-scale DCT)"}}
    return {**pre.model_dump(), "decode": decode, "pixels": "0..255, then (pixel - mean) / std per channel",
            "steps": ("decode as 'decode' says; resize_mode shortest: scale the shorter side to resize_shorter "
                      "(each side at least crop, rounded), centre-crop crop x crop; squash: resize to "
                      "crop x crop; then NCHW float32")}


def package_meta(*, dataset: str, kind: Literal["text", "image"], head: Head, manifest: ModelManifest,
                 model_file: str, inputs: Sequence[str], tags: Sequence[PackageTag]) -> dict[str, Any]:
    """What ``kashf.json`` says."""
    return {
        "format": FORMAT,
        "dataset": dataset,
        "kind": kind,
        "head_version": head.version,
        "model_id": head.model_id,
        "model": {"name": manifest.name, "file": model_file, "dim": manifest.dim},
        "inputs": list(inputs),
        "output": OUTPUT,
        "exclusive": head.exclusive,
        "none_logit": float(head.none_logit),
        "tags": [{"id": t.id, "title": t.title, "active": t.active, "threshold": t.threshold} for t in tags],
        "decision": ("columns follow 'tags'; the API answers the active tags whose probability reaches their "
                     "threshold, highest first, or the unknown tag (id 0) when none does"),
        "preprocessing": _preprocessing(manifest),
    }


@functools.lru_cache(maxsize=2)
def export_tokenizer(model_dir: Path, pre: TextPreprocessing) -> str:
    """The model's tokenizer with the service's truncation and padding set, so ``encode_batch`` gives the feeds.
    Kept (about 8 MB for e5): loading the tokenizer holds the interpreter about a second, stalling the service's
    event loop, so only the first export of a process pays it."""
    tok = Tokenizer.from_file(str(model_dir / pre.tokenizer))
    tok.enable_truncation(max_length=pre.max_length)
    tok.enable_padding(pad_id=pre.pad_id, pad_token=tok.id_to_token(pre.pad_id) or "<pad>")
    return str(tok.to_str())


def build_package(model_dir: Path, model_id: str, head: Head, *, dataset: str, kind: Literal["text", "image"],
                  tags: Iterable[ExportTag], dest: Path) -> int:
    """Write the zip to ``dest`` and return its size; blocking (seconds for a 120 MB model): run in a thread."""
    manifest = load_manifest(model_dir)
    if manifest.modality != kind:
        raise Unavailable(f"this service runs a {manifest.modality} model, the dataset holds {kind}")
    model_file = model_file_for(manifest, model_id)
    encoder = onnx.load(str(model_dir / model_file))
    fused = fuse(encoder, manifest.outputs[0], head)
    inputs = [i.name for i in fused.graph.input if i.name not in {t.name for t in fused.graph.initializer}]
    meta = package_meta(dataset=dataset, kind=kind, head=head, manifest=manifest, model_file=model_file,
                        inputs=inputs, tags=package_tags(head, tags))
    serialized = fused.SerializeToString()
    del encoder, fused
    with zipfile.ZipFile(dest, "w") as zf:
        deflate = {"compress_type": zipfile.ZIP_DEFLATED, "compresslevel": 6}
        zf.writestr(META_FILE, json.dumps(meta, ensure_ascii=False, indent=1), **deflate)
        if isinstance(manifest.preprocessing, TextPreprocessing):
            zf.writestr(TOKENIZER_FILE, export_tokenizer(model_dir, manifest.preprocessing), **deflate)
            zf.writestr(NORMALIZER_FILE, Path(shared.textnorm.__file__).read_text(encoding="utf-8"), **deflate)
        # Quantised weights barely compress: stored, the zip is written at disk speed.
        zf.writestr(MODEL_FILE, serialized, compress_type=zipfile.ZIP_STORED)
    return dest.stat().st_size


def package_name(dataset: str, version: int) -> str:
    return f"{dataset}-v{version}.zip"


# ----------------------------------------------------------------------------------------------------------------
# Serving: build on request, hand the zip over through the blobs bucket (NATS messages are at most 1 MiB)


async def put_file(bus: Bus, path: Path, *, prefix: str) -> str:
    """Store the file in the blobs bucket in chunks (never whole in memory); returns its key."""
    key = f"{prefix}-{secrets.token_hex(16)}"
    try:
        store = await bus.js.object_store(BLOBS_BUCKET)
        handle = await asyncio.to_thread(path.open, "rb")
        try:
            await store.put(key, handle)
        finally:
            await asyncio.to_thread(handle.close)
    except (nats.js.errors.BucketNotFoundError, nats.errors.Error, TimeoutError, OSError) as exc:
        raise Unavailable("blob store unavailable: cannot hand the export over") from exc
    return key


async def export_dataset(bus: Bus, service: BatchedModelService[Any], model_dir: Path,
                         request: ExportRequest) -> ExportReply:
    """Build the dataset's package from its live head and put it in the blobs bucket; the gateway deletes it
    once sent (else the bucket's TTL does)."""
    head = await service.head_for(request.head)  # a head of another model is a 503 head_model_mismatch
    if head is None:
        raise BadRequest(f"dataset '{request.dataset}' has no trained head to export", code="not_trained")
    with tempfile.TemporaryDirectory(prefix="kashf-export-") as tmp:
        dest = Path(tmp) / "package.zip"
        size = await asyncio.to_thread(build_package, model_dir, service.model_id, head, dataset=request.dataset,
                                       kind=request.kind, tags=request.tags, dest=dest)
        key = await put_file(bus, dest, prefix="export")
    log.info("dataset_exported", dataset_id=request.head.dataset_id, version=head.version, bytes=size)
    return ExportReply(key=key, size=size, version=head.version, filename=package_name(request.dataset, head.version))


async def serve_export(bus: Bus, subject: Subject, service: BatchedModelService[Any], model_dir: Path) -> None:
    """Answer export requests; one build at a time per replica (it holds the model twice in memory), more are
    answered "overloaded" (429) at once."""

    async def handle(request: ExportRequest) -> ExportReply:
        return await export_dataset(bus, service, model_dir, request)

    await bus.serve(subject, ExportRequest, instrumented(subject.name, handle), concurrency=1)
