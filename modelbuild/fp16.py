"""A float16 GPU file for a built text model: ONNX Runtime's transformer fusions, then weights in fp16.

`python -m modelbuild fp16 models/text/multilingual-e5-small` writes ``model.fp16.onnx`` beside the fp32
file and makes it the manifest's ``gpu_file``. Inputs and outputs stay int64 / float32, so the services feed
it as they feed the fp32 file. The step checks its output against the fp32 file on the CPU before it
touches the manifest. A model id names its file's hash, so heads fitted on the fp32 GPU file answer
``head_model_mismatch`` on the fp16 one until the datasets are refitted (``kashf-admin retrain-all``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelbuild.export import cosine_rows, sha256_file, write_manifest
from modelkit.onnx.manifest import MANIFEST_NAME, TextPreprocessing, load_manifest

FP16_FILE = "model.fp16.onnx"
# Cosine floor of fp16 against fp32 rows; measured on multilingual-e5-small: 0.9999999 on the probe texts.
MIN_COSINE = 0.999
_PROBES = ["a short sentence", "این گوشی واقعا عالی بود و به همه پیشنهاد می‌کنم", "ok",
           "the battery died after two weeks, not worth the money at all"]


def _probe_feeds(model_dir: Path, pre: TextPreprocessing) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / pre.tokenizer))
    tok.enable_padding(pad_id=pre.pad_id)
    enc = tok.encode_batch([pre.prefix + t for t in _PROBES])
    return {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}


def _embed(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return np.asarray(sess.run(None, {k: v for k, v in feeds.items() if k in names})[0], dtype=np.float32)


def convert_fp16(model_dir: Path) -> float:
    """Write the fp16 GPU file and point the manifest at it; returns the worst probe cosine against fp32."""
    from onnxruntime.transformers import optimizer

    manifest = load_manifest(model_dir)
    pre = manifest.preprocessing
    if manifest.modality != "text" or not isinstance(pre, TextPreprocessing):
        raise RuntimeError(f"{model_dir}: fp16 conversion is for text models")
    source = model_dir / ("model.fp32.onnx" if manifest.gpu_file == FP16_FILE else manifest.gpu_file)
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing: rebuild the model (make models)")
    # num_heads / hidden_size 0: the optimizer reads them off the graph (BERT and XLM-R shapes alike)
    model = optimizer.optimize_model(str(source), model_type="bert", num_heads=0, hidden_size=0,
                                     opt_level=0, use_gpu=True)
    model.convert_float_to_float16(keep_io_types=True)
    target = model_dir / FP16_FILE
    tmp = target.with_suffix(".tmp")
    model.save_model_to_file(str(tmp))
    feeds = _probe_feeds(model_dir, pre)
    worst = float(cosine_rows(_embed(source, feeds), _embed(tmp, feeds)).min())
    if worst < MIN_COSINE:
        tmp.unlink()
        raise RuntimeError(f"fp16 output differs from fp32 (cosine {worst:.5f} < {MIN_COSINE})")
    tmp.replace(target)
    files = {**manifest.files, FP16_FILE: sha256_file(target)}
    # A new file, then a rename: the folder's files may be hard links into the build cache (modelbuild.build).
    staging = model_dir / ".manifest-fp16"
    staging.mkdir(exist_ok=True)
    write_manifest(staging, manifest.model_copy(update={"files": files, "gpu_file": FP16_FILE}))
    (staging / MANIFEST_NAME).replace(model_dir / MANIFEST_NAME)
    staging.rmdir()
    return worst
