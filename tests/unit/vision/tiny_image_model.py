"""A tiny two-tower (CLIP-shaped) image model in the built-model layout, made by the tests.

Image tower: mean colour of the normalised pixels, rotated into ``dim`` dimensions. Text tower: mean of
token embeddings where "red"/"قرمز" sit on the direction of a red image, and so on; so zero-shot
tagging by title is exactly predictable. Same graph contract as the real export (pixels -> embedding,
text -> embedding), so the real ImageEncoder loads it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, pre_tokenizers

# Colour directions in normalised pixel space ((x - 127) / 128): +1 where the channel is high.
COLOURS = {
    "red": (1.0, -1.0, -1.0), "قرمز": (1.0, -1.0, -1.0),
    "green": (-1.0, 1.0, -1.0), "سبز": (-1.0, 1.0, -1.0),
    "blue": (-1.0, -1.0, 1.0), "آبی": (-1.0, -1.0, 1.0),
}
SPECIALS = ["<pad>", "<unk>"]
CONTEXT = 8


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build_tiny_image_model(out: Path, *, dim: int = 16, text_tower: bool = True, seed: int = 0) -> Path:
    """Write a model dir (manifest.json, image.onnx, optional text tower) and return it."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # Orthonormal rows: the projection keeps cosines between colour directions.
    q, _ = np.linalg.qr(rng.standard_normal((dim, 3)))
    proj = q.T.astype(np.float32)  # (3, dim)

    image = helper.make_graph(
        [helper.make_node("ReduceMean", ["pixels"], ["colour"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["colour", "proj"], ["embedding"])],
        "tiny_image",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", dim])],
        initializer=[numpy_helper.from_array(proj, "proj")],
    )
    _save(image, out / "image.onnx")
    files = ["image.onnx"]
    tower = None
    if text_tower:
        vocab = {tok: i for i, tok in enumerate([*SPECIALS, *COLOURS])}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.save(str(out / "text_tokenizer.json"))
        table = np.zeros((len(vocab), dim), dtype=np.float32)
        for word, colour in COLOURS.items():
            table[vocab[word]] = np.asarray(colour, dtype=np.float32) @ proj
        text = helper.make_graph(
            [helper.make_node("Gather", ["table", "text"], ["tokens"]),
             helper.make_node("Equal", ["text", "pad"], ["is_pad"]),
             helper.make_node("Not", ["is_pad"], ["keep"]),
             helper.make_node("Cast", ["keep"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
             helper.make_node("Mul", ["tokens", "mask3"], ["masked"]),
             helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
             helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),
             helper.make_node("Max", ["count", "one"], ["safe"]),
             helper.make_node("Div", ["summed", "safe"], ["embedding"])],
            "tiny_text_tower",
            [helper.make_tensor_value_info("text", TensorProto.INT64, ["n", CONTEXT])],
            [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", dim])],
            initializer=[numpy_helper.from_array(table, "table"),
                         numpy_helper.from_array(np.array(0, dtype=np.int64), "pad"),
                         numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
                         numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
                         numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")],
        )
        _save(text, out / "text.onnx")
        files += ["text.onnx", "text_tokenizer.json"]
        tower = {"file": "text.onnx", "tokenizer": "text_tokenizer.json", "context_length": CONTEXT,
                 "dim": dim, "pad_id": 0, "input_name": "text"}
    manifest = {
        "name": "tiny-image" + ("-clip" if text_tower else ""), "modality": "image", "dim": dim, "opset": 17,
        "preprocessing": {"kind": "image", "resize_shorter": 64, "crop": 56, "interpolation": "bilinear",
                          "mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0]},
        "files": {f: _sha(out / f) for f in files}, "cpu_file": "image.onnx", "gpu_file": "image.onnx",
        "inputs": ["pixels"], "outputs": ["embedding"], "text_tower": tower,
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out
