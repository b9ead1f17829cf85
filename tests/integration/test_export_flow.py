"""export_dataset end to end: train a text and an image dataset through the API, download their zips, run them with
onnxruntime in a fresh interpreter and compare with the API's probabilities (within 0.01, as the SPEC says)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from urllib.parse import quote

import httpx
import nats
import nats.js.errors
import numpy as np
import pytest

from shared import natsauth
from shared.subjects import BLOBS_BUCKET
from tests.fileserver import file_server
from tests.integration.conftest import NatsServer, Stack
from tests.integration.media import jpeg, photos, variant
from tests.integration.test_text_flow import make_text_dataset, wait_trained
from tests.integration.texts import TRAIN, UNSEEN

pytestmark = pytest.mark.integration

TOLERANCE = 0.01  # the SPEC's; the API rounds to 2 decimals, which is half of it

# Only the zip and plain packages: onnxruntime, tokenizers, numpy, PIL; no Kashf module is imported.
_RUN = r"""
import io, json, sys, zipfile, numpy as np, onnxruntime as ort
z = zipfile.ZipFile(sys.argv[1]); meta = json.loads(z.read("kashf.json")); inputs = json.loads(sys.argv[2])
sess = ort.InferenceSession(z.read("model.onnx"), providers=["CPUExecutionProvider"])
pre = meta["preprocessing"]
if meta["kind"] == "text":
    from tokenizers import Tokenizer
    ns = {}; exec(z.read("normalize.py").decode(), ns)
    tok = Tokenizer.from_str(z.read("tokenizer.json").decode())
    enc = tok.encode_batch([pre["prefix"] + ns["normalize_text"](t) for t in inputs])
    feeds = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
             "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}
else:
    from PIL import Image, ImageOps
    rows = []
    draft = pre["decode"]["jpeg_draft"]
    for path in inputs:
        img = Image.open(path)
        if img.format == "JPEG" and min(img.size) >= draft["when_shorter_side_at_least"]:
            img.draft(draft["pil_draft"][0], tuple(draft["pil_draft"][1]))
        img = ImageOps.exif_transpose(img).convert("RGB")
        w, h = img.size; crop = pre["crop"]; s = pre["resize_shorter"] / min(w, h)
        nw, nh = max(crop, round(w * s)), max(crop, round(h * s))
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - crop) // 2, (nh - crop) // 2
        img = img.crop((left, top, left + crop, top + crop))
        arr = (np.asarray(img, dtype=np.float32) - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
        rows.append(arr.transpose(2, 0, 1))
    feeds = {meta["inputs"][0]: np.stack(rows).astype(np.float32)}
if sys.argv[3:] == ["each"]:  # one model call per item
    out = np.concatenate([sess.run([meta["output"]], {k: v[i:i + 1] for k, v in feeds.items()})[0]
                          for i in range(len(inputs))])
else:
    out = sess.run([meta["output"]], feeds)[0]
print(json.dumps(out.tolist()))
"""


async def exports_left(stack_nats: NatsServer, passwords: dict[str, str], wait_s: float = 10.0) -> list[str]:
    """Export zips still in the blobs bucket after up to ``wait_s``: the gateway deletes each once it has streamed
    it, which may end a moment after the client holds the last byte."""
    nc = await nats.connect(natsauth.with_user(stack_nats.url, "admin", passwords["admin"]))
    try:
        store = await nc.jetstream().object_store(BLOBS_BUCKET)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                infos = await store.list(ignore_deletes=True)
            except nats.js.errors.NotFoundError:  # an empty bucket
                return []
            left = [i.name for i in infos if i.name.startswith("export-") and not i.deleted]
            if not left or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


def run_package(path: Path, inputs: list[str], *, each: bool = False) -> np.ndarray:
    """The zip's probabilities for ``inputs`` in one model call, or with ``each`` one call per item."""
    args = [sys.executable, "-c", _RUN, str(path), json.dumps(inputs), *(["each"] if each else [])]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return np.array(json.loads(out.stdout))


async def export(api: httpx.AsyncClient, dataset: str, dest: Path) -> dict:
    """Download the zip (streamed), check the response, and return its kashf.json."""
    started = time.monotonic()
    async with api.stream("POST", "/api/export_dataset/", json={"dataset": dataset}) as r:
        assert r.status_code == 200, (await r.aread()).decode(errors="replace")
        assert r.headers["content-type"] == "application/zip"
        length = int(r.headers["content-length"])
        received = 0
        with dest.open("wb") as f:
            async for chunk in r.aiter_bytes():
                f.write(chunk)
                received += len(chunk)
    assert received == length
    print(f"export {dataset}: {length / 1e6:.1f} MB in {time.monotonic() - started:.1f} s")
    with zipfile.ZipFile(dest) as zf:
        meta = json.loads(zf.read("kashf.json"))
    assert meta["dataset"] == dataset and meta["output"] == "probabilities"
    disposition = r.headers["content-disposition"]
    assert disposition.startswith("attachment;")
    filename = f"{dataset}-v{meta['head_version']}.zip"
    assert f"filename*=UTF-8''{quote(filename, safe='')}" in disposition
    return meta


async def api_probabilities(api: httpx.AsyncClient, path: str, body: dict, meta: dict) -> np.ndarray:
    """(items, columns) of the API's answer with every tag listed (min_probability 0), columns as in kashf.json;
    an inactive column (never answered) stays NaN."""
    r = await api.post(path, json={**body, "min_probability": 0})
    assert r.status_code == 200, r.text
    columns = {t["id"]: j for j, t in enumerate(meta["tags"])}
    out = np.full((len(r.json()), len(columns)), np.nan)
    for i, item in enumerate(r.json()):
        assert not item.get("error"), item
        for tag in item["tags"]:
            out[i, columns[tag["id"]]] = tag["probability"]
    return out


def assert_close(api: np.ndarray, offline: np.ndarray, meta: dict) -> None:
    active = [j for j, t in enumerate(meta["tags"]) if t["active"]]
    assert not np.isnan(api[:, active]).any(), "min_probability=0 should list every active tag"
    gap = np.abs(api[:, active] - offline[:, active]).max()
    print(f"export {meta['dataset']} ({meta['kind']}, exclusive={meta['exclusive']}): max |API - offline| = "
          f"{gap:.4f} over {api.shape[0]} items x {len(active)} tags")
    assert gap <= TOLERANCE


@pytest.mark.parametrize("multi_label", [False, True])
async def test_a_text_datasets_export_runs_offline_with_the_apis_probabilities(
        api: httpx.AsyncClient, tmp_path: Path, multi_label: bool, stack_nats: NatsServer,
        nats_passwords: dict[str, str]) -> None:
    dataset = f"export-reviews-{'multi' if multi_label else 'single'}"
    tag_ids = await make_text_dataset(api, dataset)
    titles = list(TRAIN)
    if multi_label:  # one item with two tags makes the head multi-label (independent sigmoids)
        r = await api.post("/api/report_text_tags/", json=[
            {"content": TRAIN[titles[0]][0], "tag_id": tag_ids[titles[1]], "positive": True}])
        assert r.status_code == 200, r.text
    # A threshold override must reach kashf.json as the threshold in force.
    r = await api.post("/api/update_tag/", json={"dataset": dataset, "tag_id": tag_ids[titles[2]], "threshold": 0.77})
    assert r.status_code == 200, r.text
    await api.post("/api/train_dataset/", json={"dataset": dataset})
    await wait_trained(api, dataset)

    meta = await export(api, dataset, tmp_path / "reviews.zip")
    assert await exports_left(stack_nats, nats_passwords) == []
    assert meta["kind"] == "text" and meta["exclusive"] is (not multi_label)
    assert {t["id"] for t in meta["tags"]} == set(tag_ids.values())
    assert all(0 < t["threshold"] < 1 for t in meta["tags"])
    assert next(t for t in meta["tags"] if t["id"] == tag_ids[titles[2]])["threshold"] == 0.77
    with zipfile.ZipFile(tmp_path / "reviews.zip") as zf:
        assert {"model.onnx", "kashf.json", "tokenizer.json", "normalize.py"} <= set(zf.namelist())

    texts = [t for t, _ in UNSEEN] + [TRAIN[titles[0]][0], "كيفيت عالي داره ۲ تا خریدم", "ok"]
    offline = run_package(tmp_path / "reviews.zip", texts)
    want = await api_probabilities(api, "/api/tag_texts/", {"dataset": dataset, "contents": texts}, meta)
    assert_close(want, offline, meta)
    # The int8 model quantises activations per model call: a text's probabilities depend on the texts beside it
    # (in the service too, whose batcher merges requests). One text per call reproduces a lone request.
    each = run_package(tmp_path / "reviews.zip", texts, each=True)
    gap = np.abs(each - offline)
    print(f"export {dataset}: one text per call against all in one call: mean {gap.mean():.4f}, max {gap.max():.4f}")
    for i in (0, 4):
        alone = await api_probabilities(api, "/api/tag_texts/", {"dataset": dataset, "contents": [texts[i]]}, meta)
        assert_close(alone, each[i : i + 1], meta)


async def test_an_image_datasets_export_runs_offline_with_the_apis_probabilities(
        api: httpx.AsyncClient, tmp_path: Path) -> None:
    dataset = "export-places"
    r = await api.post("/api/create_dataset/", json={"dataset": dataset, "title": "لحظه", "kind": "image"})
    assert r.status_code == 200, r.text
    tag_ids = {}
    for name in photos():
        tag_ids[name] = (await api.post("/api/create_tag/", json={"dataset": dataset, "title": name})).json()["tag_id"]
    files = {f"/{name}-{k}.jpg": ("image/jpeg", jpeg(variant(photo, k)))
             for name, photo in photos().items() for k in (*range(3), 11, 12)}
    # Photos as a camera makes them: the service decodes these at reduced scale (kashf.json's "decode" says how).
    files |= {f"/{name}-large.jpg": ("image/jpeg", jpeg(variant(photo, 13, size=1700)))
              for name, photo in photos().items()}
    with file_server(files) as server:
        reports = [{"image_url": f"{server.base}/{name}-{k}.jpg", "tag_id": tag_ids[name], "positive": True}
                   for name in photos() for k in range(3)]
        r = await api.post("/api/report_image_tags/", json=reports)
        assert r.status_code == 200, r.text
        await api.post("/api/train_dataset/", json={"dataset": dataset})
        await wait_trained(api, dataset)
        meta = await export(api, dataset, tmp_path / "places.zip")
        unseen = [f"/{name}-{k}.jpg" for name in photos() for k in (11, 12, "large")]
        want = await api_probabilities(api, "/api/tag_images/", {
            "dataset": dataset, "image_urls": [server.base + path for path in unseen]}, meta)
    assert meta["kind"] == "image" and meta["preprocessing"]["layout"] == "NCHW"
    for path in unseen:
        (tmp_path / path.lstrip("/")).write_bytes(files[path][1])
    offline = run_package(tmp_path / "places.zip", [str(tmp_path / path.lstrip("/")) for path in unseen])
    assert_close(want, offline, meta)


async def test_untrained_unknown_and_other_accounts_datasets_are_refused(
        api: httpx.AsyncClient, stack: Stack, other_token: str) -> None:
    r = await api.post("/api/create_dataset/", json={"dataset": "export-untrained", "kind": "text"})
    assert r.status_code == 200, r.text
    r = await api.post("/api/export_dataset/", json={"dataset": "export-untrained"})
    assert r.status_code == 400 and r.json()["error"] == "not_trained", r.text
    r = await api.post("/api/export_dataset/", json={"dataset": "no-such-dataset"})
    assert r.status_code == 404 and r.json()["error"] == "dataset_not_found", r.text
    async with httpx.AsyncClient(base_url=stack.url, headers={"Authorization": f"Token {other_token}"},
                                 timeout=60.0) as other:
        r = await other.post("/api/export_dataset/", json={"dataset": "export-untrained"})
        assert r.status_code == 404, r.text
        r = await other.post("/api/export_dataset", json={"dataset": "export-untrained"})
        assert r.status_code == 404, r.text
    r = await api.post("/api/export_dataset/", json={})
    assert r.status_code == 422


def test_the_zip_response_is_documented(stack: Stack) -> None:
    schema = httpx.get(f"{stack.url}/openapi.json").json()
    op = schema["paths"]["/api/export_dataset/"]["post"]
    assert "application/zip" in op["responses"]["200"]["content"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("ExportDatasetBody")
    assert "/api/export_dataset" not in schema["paths"]
