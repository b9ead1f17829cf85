"""A tiny text model in the built-model layout (manifest, tokenizer.json, ONNX), made by the tests.

Word embeddings mean-pooled over the attention mask: the same graph contract as the real e5 export
(input_ids, attention_mask -> sentence_embedding), so the real TextEncoder loads it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, pre_tokenizers, processors

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def build_tiny_text_model(out: Path, words: list[str], *, dim: int = 32, seed: int = 0) -> Path:
    """Write a model dir whose vocabulary is ``words`` (plus specials) and return it."""
    out.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([*SPECIALS, "query:", *words]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    tok.save(str(out / "tokenizer.json"))

    table = np.random.default_rng(seed).standard_normal((len(vocab), dim)).astype(np.float32)
    # Tokens every text shares (prefix, <s>, </s>) weigh little, so texts differ by their words.
    shared_rows = [vocab[t] for t in ("<s>", "</s>", "query:") if t in vocab]
    table[shared_rows] *= 0.1
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["tokens"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["tokens", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),
        helper.make_node("Div", ["summed", "count"], ["sentence_embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_text",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n", "len"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["n", "len"])],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["n", dim])],
        initializer=[numpy_helper.from_array(table, "table"),
                     numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
                     numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = out / "model.onnx"
    onnx.save(model, str(path))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {
        "name": "tiny-text", "modality": "text", "dim": dim, "opset": 17,
        "preprocessing": {"kind": "text", "prefix": "query: ", "max_length": 64,
                          "tokenizer": "tokenizer.json", "pad_id": 0},
        "files": {"model.onnx": sha}, "cpu_file": "model.onnx", "gpu_file": "model.onnx",
        "inputs": ["input_ids", "attention_mask"], "outputs": ["sentence_embedding"],
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out
