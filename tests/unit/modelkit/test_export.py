"""The exported tagger: the fused graph gives what the service computes (encoder, L2, Head.probabilities), on tiny
random encoders of both opset styles and on the built models; the zip runs with onnxruntime alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from modelkit.export import OUTPUT, build_package, fuse, model_file_for, package_tags
from modelkit.heads import Head
from modelkit.onnx.manifest import load_manifest
from modelkit.onnx.text import l2_normalise
from shared.errors import Unavailable
from shared.schemas.export import ExportTag
from shared.textnorm import normalize_text
from tests.unit.text.tiny_text_model import build_tiny_text_model

REPO = Path(__file__).resolve().parents[3]
MODELS = Path(os.environ.get("KASHF_MODELS_DIR", REPO / "models"))
TEXT_MODEL = MODELS / "text" / "multilingual-e5-small"
IMAGE_MODEL = MODELS / "image" / "efficientnet-lite0"

TEXTS = ["پیشنهاد میکنم از این بخرید خیلی عالیه.", "Terrible quality, it broke after three days.",
         "بسته یک روزه به دستم رسید، ارسال خیلی سریع بود", "كيفيت عالي داره", "ok", "۲ هفته", "a " * 600]


def make_head(dim: int, k: int, *, exclusive: bool, seed: int = 0, model_id: str = "m@0", scale: float = 3.0) -> Head:
    rng = np.random.default_rng(seed)
    return Head(
        model_id=model_id, version=3, tag_ids=np.arange(10, 10 + k, dtype=np.int64),
        weights=(rng.standard_normal((k, dim)) * scale).astype(np.float32),
        bias=rng.standard_normal(k).astype(np.float32),
        calibration=np.stack([rng.uniform(0.5, 2.0, k), rng.standard_normal(k)], axis=1).astype(np.float32),
        thresholds=rng.uniform(0.2, 0.8, k).astype(np.float32), exclusive=exclusive,
        none_logit=float(rng.standard_normal()),
    )


def session(model: onnx.ModelProto | bytes) -> ort.InferenceSession:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def tiny_encoder(opset: int, *, dim: int = 8, token_types: bool = False) -> onnx.ModelProto:
    """ids (n, len) -> mean of Gathered rows (+ a type embedding) -> "embedding" (n, dim); a second output whose
    internal tensor is called "probabilities" (a classifier's own), which the fused graph must not clash with."""
    rng = np.random.default_rng(opset)
    inits = [numpy_helper.from_array(rng.standard_normal((50, dim)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.standard_normal((dim, 5)).astype(np.float32), "cls_w")]
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["tokens"])]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n", "len"])]
    if token_types:
        inits.append(numpy_helper.from_array(rng.standard_normal((2, dim)).astype(np.float32) * 5, "types"))
        nodes += [helper.make_node("Gather", ["types", "token_type_ids"], ["typed"]),
                  helper.make_node("Add", ["tokens", "typed"], ["tokens_t"])]
        inputs.append(helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["n", "len"]))
    last = "tokens_t" if token_types else "tokens"
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
        nodes.append(helper.make_node("ReduceMean", [last, "axis1"], ["embedding"], keepdims=0))
    else:
        nodes.append(helper.make_node("ReduceMean", [last], ["embedding"], axes=[1], keepdims=0))
    nodes += [helper.make_node("MatMul", ["embedding", "cls_w"], ["scores"]),
              helper.make_node("Softmax", ["scores"], ["probabilities"], axis=-1),
              helper.make_node("Identity", ["probabilities"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny", inputs,
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", dim]),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 5])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def reference(encoder: onnx.ModelProto, head: Head, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """What the service computes: the encoder's embedding, L2-normalised, then Head.probabilities."""
    return head.probabilities(l2_normalise(session(encoder).run(["embedding"], feeds)[0]))


@pytest.mark.parametrize("opset", [13, 17, 18])
@pytest.mark.parametrize("exclusive", [False, True])
def test_the_fused_graph_gives_the_services_probabilities(opset: int, exclusive: bool) -> None:
    encoder = tiny_encoder(opset)
    original = encoder.SerializeToString()
    ids = np.random.default_rng(1).integers(0, 50, size=(7, 9), dtype=np.int64)
    head = make_head(8, 4, exclusive=exclusive)
    fused = fuse(onnx.load_from_string(original), "embedding", head)

    sess = session(fused)
    assert [o.name for o in sess.get_outputs()] == [OUTPUT]
    got = sess.run([OUTPUT], {"input_ids": ids})[0]
    assert got.dtype == np.float32 and got.shape == (7, 4)
    np.testing.assert_allclose(got, reference(onnx.load_from_string(original), head, {"input_ids": ids}), atol=1e-5)
    if exclusive:
        assert (got >= 0.5).sum(axis=1).max() <= 1  # only the top tag can reach 0.5
    # The encoder's graph is kept: opset, IR version, every node feeding the embedding untouched; its own
    # "probabilities" tensor went with the dropped output, so nothing else bears the name.
    before = onnx.load_from_string(original)
    assert fused.ir_version == before.ir_version and list(fused.opset_import) == list(before.opset_import)
    assert [n for n in fused.graph.node if n.output[0] in ("tokens", "embedding")] == list(before.graph.node[:2])
    assert sum(OUTPUT in n.output for n in fused.graph.node) == 1


def test_a_renamed_clash_keeps_the_encoders_own_tensor_working() -> None:
    """When the embedding itself comes through a tensor called "probabilities", ours still takes the name."""
    encoder = tiny_encoder(18)
    for node in encoder.graph.node:
        node.output[:] = ["probabilities" if o == "embedding" else ("x_soft" if o == "probabilities" else o)
                          for o in node.output]
        node.input[:] = ["probabilities" if i == "embedding" else ("x_soft" if i == "probabilities" else i)
                         for i in node.input]
    encoder.graph.output[0].name = "probabilities"
    ids = np.random.default_rng(2).integers(0, 50, size=(3, 4), dtype=np.int64)
    head = make_head(8, 3, exclusive=False)
    want = head.probabilities(l2_normalise(session(encoder).run(["probabilities"], {"input_ids": ids})[0]))
    got = session(fuse(encoder, "probabilities", head)).run([OUTPUT], {"input_ids": ids})[0]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_token_type_ids_become_zeros_inside_as_the_service_feeds() -> None:
    encoder = tiny_encoder(18, token_types=True)
    ids = np.random.default_rng(3).integers(0, 50, size=(4, 6), dtype=np.int64)
    head = make_head(8, 3, exclusive=True)
    want = reference(encoder, head, {"input_ids": ids, "token_type_ids": np.zeros_like(ids)})
    fused = session(fuse(encoder, "embedding", head))
    assert [i.name for i in fused.get_inputs()] == ["input_ids"]
    np.testing.assert_allclose(fused.run([OUTPUT], {"input_ids": ids})[0], want, atol=1e-5)


def test_exclusive_ties_and_a_single_tag_match_the_numpy_head() -> None:
    encoder = tiny_encoder(18)
    ids = np.random.default_rng(4).integers(0, 50, size=(5, 3), dtype=np.int64)
    tied = make_head(8, 4, exclusive=True)
    weights = tied.weights.copy()
    weights[2] = weights[0]  # tags 0 and 2 always tie
    calibration = tied.calibration.copy()
    calibration[2] = calibration[0]
    bias = tied.bias.copy()
    bias[2] = bias[0]
    tied = Head(tied.model_id, 3, tied.tag_ids, weights, bias, calibration, tied.thresholds, True, -50.0)
    got = session(fuse(onnx.load_from_string(encoder.SerializeToString()), "embedding", tied)).run(
        [OUTPUT], {"input_ids": ids})[0]
    np.testing.assert_allclose(got, reference(encoder, tied, {"input_ids": ids}), atol=1e-5)
    np.testing.assert_allclose(got[:, 0], got[:, 2])
    one = make_head(8, 1, exclusive=True)  # no rival but "none"
    got = session(fuse(onnx.load_from_string(encoder.SerializeToString()), "embedding", one)).run(
        [OUTPUT], {"input_ids": ids})[0]
    np.testing.assert_allclose(got, reference(encoder, one, {"input_ids": ids}), atol=1e-5)


def test_tags_carry_titles_active_flags_and_the_thresholds_in_force() -> None:
    head = make_head(8, 3, exclusive=False)
    tags = [ExportTag(id=10, title="a", active=True, threshold_override=0.9),
            ExportTag(id=11, title="b", active=False)]  # 12: deleted since the fit
    out = package_tags(head, tags)
    assert [(t.id, t.title, t.active) for t in out] == [(10, "a", True), (11, "b", False), (12, None, False)]
    assert out[0].threshold == 0.9
    assert out[1].threshold == pytest.approx(float(head.thresholds[1]), abs=1e-6)


def test_a_model_id_of_other_weights_is_not_exported(tmp_path: Path) -> None:
    model_dir = build_tiny_text_model(tmp_path / "tiny", ["hello"])
    manifest = load_manifest(model_dir)
    digest = manifest.files["model.onnx"]
    assert model_file_for(manifest, f"tiny-text@{digest[:12]}") == "model.onnx"
    with pytest.raises(Unavailable):
        model_file_for(manifest, "tiny-text@000000000000")


# A fresh interpreter with only the zip: onnxruntime, tokenizers and the package's own normalize.py.
_RUN_TEXT = """
import json, sys, zipfile, numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
z = zipfile.ZipFile(sys.argv[1]); meta = json.loads(z.read("kashf.json"))
ns = {}; exec(z.read("normalize.py").decode(), ns)
tok = Tokenizer.from_str(z.read("tokenizer.json").decode())
enc = tok.encode_batch([meta["preprocessing"]["prefix"] + ns["normalize_text"](t) for t in json.loads(sys.argv[2])])
sess = ort.InferenceSession(z.read("model.onnx"), providers=["CPUExecutionProvider"])
feeds = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
         "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}
print(json.dumps(sess.run([meta["output"]], feeds)[0].tolist()))
"""


def run_text_package(path: Path, texts: list[str]) -> np.ndarray:
    out = subprocess.run([sys.executable, "-c", _RUN_TEXT, str(path), json.dumps(texts)], capture_output=True,
                         text=True, check=True, timeout=120)
    return np.array(json.loads(out.stdout))


def text_reference(model_dir: Path, head: Head, texts: list[str]) -> np.ndarray:
    from modelkit.onnx.text import TextEncoder

    encoder = TextEncoder(model_dir, "cpu", 1)
    assert encoder.model_id == head.model_id
    return head.probabilities(encoder.encode([normalize_text(t) for t in texts]))


def test_a_text_package_runs_alone_and_says_what_it_holds(tmp_path: Path) -> None:
    words = [w for t in TEXTS for w in normalize_text(t).split()]
    model_dir = build_tiny_text_model(tmp_path / "tiny", words)
    manifest = load_manifest(model_dir)
    model_id = f"tiny-text@{manifest.files['model.onnx'][:12]}"
    head = make_head(manifest.dim, 3, exclusive=True, model_id=model_id)
    tags = [ExportTag(id=10, title="خرید", active=True), ExportTag(id=11, title="b", active=True,
                                                                     threshold_override=0.7)]
    dest = tmp_path / "out.zip"
    size = build_package(model_dir, model_id, head, dataset="reviews", kind="text", tags=tags, dest=dest)
    assert size == dest.stat().st_size
    with zipfile.ZipFile(dest) as zf:
        assert sorted(zf.namelist()) == ["kashf.json", "model.onnx", "normalize.py", "tokenizer.json"]
        meta = json.loads(zf.read("kashf.json"))
    assert meta["dataset"] == "reviews" and meta["kind"] == "text" and meta["head_version"] == 3
    assert meta["model_id"] == model_id and meta["exclusive"] is True and meta["output"] == "probabilities"
    assert meta["none_logit"] == pytest.approx(head.none_logit)
    assert meta["inputs"] == ["input_ids", "attention_mask"]
    assert [(t["id"], t["title"], t["active"]) for t in meta["tags"]] == [
        (10, "خرید", True), (11, "b", True), (12, None, False)]
    assert meta["tags"][1]["threshold"] == 0.7
    assert meta["preprocessing"]["prefix"] == "query: " and meta["preprocessing"]["max_length"] == 64
    got = run_text_package(dest, TEXTS)
    np.testing.assert_allclose(got, text_reference(model_dir, head, TEXTS), atol=1e-4)


@pytest.mark.models
@pytest.mark.parametrize("exclusive", [False, True])
def test_the_real_text_model_exported_matches_the_service(tmp_path: Path, exclusive: bool) -> None:
    if not (TEXT_MODEL / "manifest.json").is_file():
        pytest.skip(f"{TEXT_MODEL} is not built: run `make models`")
    from modelkit.onnx.text import TextEncoder

    model_id = TextEncoder(TEXT_MODEL, "cpu", 1).model_id
    head = make_head(384, 4, exclusive=exclusive, model_id=model_id, scale=8.0)
    dest = tmp_path / "e5.zip"
    build_package(TEXT_MODEL, model_id, head, dataset="reviews", kind="text", tags=[], dest=dest)
    want = text_reference(TEXT_MODEL, head, TEXTS)
    got = run_text_package(dest, TEXTS)
    assert np.abs(got - want).max() < 1e-3, np.abs(got - want).max()
    assert want.std() > 0.05  # the head's scale makes the probabilities spread (the check means something)


def photos() -> list[Image.Image]:
    rng = np.random.default_rng(5)
    out = [Image.fromarray(rng.integers(0, 255, size=(300, 420, 3), dtype=np.uint8)),
           Image.fromarray(np.tile(np.linspace(0, 255, 500, dtype=np.uint8)[None, :, None], (260, 1, 3)))]
    try:
        from skimage import data

        out += [Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]
    except ImportError:
        pass
    return out


@pytest.mark.models
@pytest.mark.parametrize("exclusive", [False, True])
def test_the_real_image_model_exported_matches_the_service(tmp_path: Path, exclusive: bool) -> None:
    if not (IMAGE_MODEL / "manifest.json").is_file():
        pytest.skip(f"{IMAGE_MODEL} is not built: run `make models`")
    from modelkit.onnx.image import ImageEncoder

    encoder = ImageEncoder(IMAGE_MODEL, "cpu", 1)
    head = make_head(encoder.dim, 3, exclusive=exclusive, model_id=encoder.model_id, scale=20.0)
    dest = tmp_path / "img.zip"
    build_package(IMAGE_MODEL, encoder.model_id, head, dataset="photos", kind="image", tags=[], dest=dest)
    with zipfile.ZipFile(dest) as zf:
        assert sorted(zf.namelist()) == ["kashf.json", "model.onnx"]
        meta = json.loads(zf.read("kashf.json"))
        sess = session(zf.read("model.onnx"))
    pre = meta["preprocessing"]
    assert (pre["crop"], pre["resize_shorter"], pre["layout"]) == (224, 256, "NCHW")
    pixels = np.stack([encoder.preprocess(img) for img in photos()])
    got = sess.run([OUTPUT], {meta["inputs"][0]: pixels})[0]
    want = head.probabilities(encoder.encode_batch(pixels))
    assert np.abs(got - want).max() < 1e-3


# The model service's side, on the real NATS: build from the stored head, hand the zip over in the blobs bucket.


async def test_the_export_subject_builds_from_the_stored_head(nats_url: str, tmp_path: Path) -> None:
    from modelkit.export import serve_export
    from modelkit.heads import HeadCache, store_head
    from modelkit.onnx.text import TextEncoder
    from shared.bus import Bus, ensure_streams
    from shared.bus.blobs import BlobStore
    from shared.errors import BadRequest
    from shared.schemas.export import ExportReply, ExportRequest
    from shared.schemas.inference import HeadRef
    from shared.subjects import TEXT_EXPORT
    from text_service.service import TextService

    model_dir = build_tiny_text_model(tmp_path / "tiny", [w for t in TEXTS for w in normalize_text(t).split()])
    encoder = TextEncoder(model_dir, "cpu", 1)
    bus = await Bus.connect(nats_url, "test-export")
    try:
        await ensure_streams(bus.js)
        head = make_head(encoder.dim, 2, exclusive=False, model_id=encoder.model_id)
        await store_head(bus.js, 9001, head)
        await store_head(bus.js, 9002, make_head(encoder.dim, 2, exclusive=False, model_id="other-model@123"))
        service = TextService(encoder, HeadCache(bus.js))
        await serve_export(bus, TEXT_EXPORT, service, model_dir)
        tags = [ExportTag(id=10, title="a", active=True)]

        def ask(dataset_id: int, version: int | None) -> ExportRequest:
            return ExportRequest(head=HeadRef(dataset_id=dataset_id, version=version), dataset="نظرات", kind="text",
                                 tags=tags)

        reply = await bus.request(TEXT_EXPORT, ask(9001, 3), ExportReply)
        assert reply.filename == "نظرات-v3.zip" and reply.version == 3 and reply.key.startswith("export-")
        data = await BlobStore(bus.js).get(reply.key, reply.size)
        dest = tmp_path / "got.zip"
        dest.write_bytes(data)
        np.testing.assert_allclose(run_text_package(dest, TEXTS), text_reference(model_dir, head, TEXTS), atol=1e-4)
        with pytest.raises(BadRequest, match="no trained head"):
            await bus.request(TEXT_EXPORT, ask(9001, None), ExportReply)
        with pytest.raises(Unavailable, match="retrain"):  # a head of another model: 503 head_model_mismatch
            await bus.request(TEXT_EXPORT, ask(9002, 3), ExportReply)
    finally:
        await bus.close(2)


def decode_as_described(data: bytes, decode: dict) -> Image.Image:  # type: ignore[type-arg]
    """What a user does with kashf.json's "decode" (the integration test's offline runner does the same)."""
    import io

    from PIL import ImageOps

    img = Image.open(io.BytesIO(data))
    draft = decode["jpeg_draft"]
    if img.format == "JPEG" and min(img.size) >= draft["when_shorter_side_at_least"]:
        img.draft(draft["pil_draft"][0], tuple(draft["pil_draft"][1]))
    img.seek(0)
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "P"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("RGB")


@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
def test_the_decode_kashf_json_describes_is_vision_services(resize_mode: str) -> None:
    import io

    from modelkit.export import _preprocessing
    from modelkit.onnx.manifest import ImagePreprocessing, ModelManifest
    from vision_service.decode import decode_image
    from vision_service.main import _needed_side

    pre = ImagePreprocessing(resize_mode=resize_mode)  # type: ignore[arg-type]
    manifest = ModelManifest(name="m", modality="image", dim=4, preprocessing=pre, opset=18, files={},
                             cpu_file="m.onnx", gpu_file="m.onnx", inputs=["pixels"], outputs=["embedding"])
    decode = _preprocessing(manifest)["decode"]
    rng = np.random.default_rng(6)
    photo = Image.fromarray(rng.integers(0, 255, size=(60, 80, 3), dtype=np.uint8)).resize((1400, 1100))
    rgba = Image.fromarray(rng.integers(0, 255, size=(50, 70, 4), dtype=np.uint8), "RGBA")
    cases = []
    for img, fmt in ((photo, "JPEG"), (photo.resize((700, 550)), "JPEG"), (rgba, "PNG")):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        cases.append(buf.getvalue())
    for data in cases:
        want = decode_image(data, max_pixels=10**8, min_side=_needed_side(pre))
        got = decode_as_described(data, decode)
        assert got.size == want.size and np.array_equal(np.asarray(got), np.asarray(want))
