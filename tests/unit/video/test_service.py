"""The video service over a real NATS server: uploads and loopback URLs, a head fitted on real photos.

Each test runs twice: with a tiny pooled-pixels ONNX model built here, and with the built
EfficientNet-Lite0 (marked ``models``; skipped when ``make models`` has not run). Requests and replies
use the gateway's message classes (shared.schemas.video), so the wire contract is what is tested.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nats.js.errors
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image
from sklearn.linear_model import LogisticRegression

from gateway.routes.video_jobs import router as video_jobs_router
from gateway.schemas import MediaItem
from gateway.service.video_jobs import read_video_job, submit_video_job
from modelkit.heads import Head, store_head
from modelkit.onnx.image import ImageEncoder
from modelkit.runtime import Readiness, stop_service
from shared.bus import Bus
from shared.errors import BadRequest, NotFound, UnsupportedMedia
from shared.schemas.inference import HeadRef, TagRef
from shared.schemas.media import MediaInput, TagVideoReply, TagVideoRequest
from shared.schemas.media import TagVideoReply as ServiceReply
from shared.settings import VideoServiceSettings
from shared.subjects import BLOBS_BUCKET, VIDEO_TAG
from tests import media_video as media
from tests.unit.gateway.harness import make_settings, running, sql
from video_service.main import setup
from video_service.sampling import format_time

REPO = Path(__file__).resolve().parents[3]
REAL_IMAGE_MODEL = "image/efficientnet-lite0"
SYNC_S = 6.0  # the synchronous limit these tests run with
UNKNOWN = 0
TAGS = {"astronaut": TagRef(id=101, title="فضانورد"), "coffee": TagRef(id=102, title="قهوه"),
        "chelsea": TagRef(id=103, title="گربه")}  # rocket has no tag: it must come back unknown


def build_grid_model(out: Path, grid: int = 8) -> Path:
    """Image model whose embedding is the (3 x grid x grid) average-pooled normalised pixels."""
    out.mkdir(parents=True, exist_ok=True)
    k = 224 // grid
    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["pixels"], ["pooled"], kernel_shape=[k, k], strides=[k, k]),
         helper.make_node("Flatten", ["pooled"], ["embedding"], axis=1)],
        "grid",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 3, 224, 224])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 3 * grid * grid])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(out / "grid.onnx"))
    manifest = {
        "name": "tiny-grid", "modality": "image", "dim": 3 * grid * grid, "opset": 17,
        "preprocessing": {"kind": "image"},
        "files": {"grid.onnx": hashlib.sha256((out / "grid.onnx").read_bytes()).hexdigest()},
        "cpu_file": "grid.onnx", "gpu_file": "grid.onnx", "inputs": ["pixels"], "outputs": ["embedding"],
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def training_photos(seed: int = 0) -> list[tuple[str, Image.Image]]:
    """Crops (60-100 % of the photo, 4:3) and mirror images of each photo: not the video's frames."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, Image.Image]] = []
    for name in media.PHOTO_NAMES:
        full = Image.fromarray(media.photo_full(name)).convert("RGB")
        for i in range(8):
            scale = rng.uniform(0.6, 1.0)
            cw = int(min(full.width, full.height * 4 / 3) * scale)
            ch = int(cw * 3 / 4)
            left = int(rng.integers(0, full.width - cw + 1))
            top = int(rng.integers(0, full.height - ch + 1))
            crop = full.crop((left, top, left + cw, top + ch)).resize(media.SIZE)
            out.append((name, crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else crop))
    return out


def fit_head(encoder: ImageEncoder) -> Head:
    """One logistic regression per tag on the photos' embeddings (rocket is every tag's negative)."""
    photos = training_photos()
    x = encoder.encode([img for _, img in photos])
    names = np.array([n for n, _ in photos])
    weights, bias = [], []
    for name in TAGS:
        lr = LogisticRegression(C=10.0, max_iter=5000).fit(x, names == name)
        weights.append(lr.coef_[0])
        bias.append(lr.intercept_[0])
    k = len(TAGS)
    return Head(
        model_id=encoder.model_id, version=1,
        tag_ids=np.array([t.id for t in TAGS.values()], dtype=np.int64),
        weights=np.array(weights, dtype=np.float32), bias=np.array(bias, dtype=np.float32),
        calibration=np.tile(np.array([1.0, 0.0], dtype=np.float32), (k, 1)),
        thresholds=np.full(k, 0.5, dtype=np.float32),
    )


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def videos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="module")
def http_base(videos_dir: Path) -> Iterator[str]:
    """A loopback file server for the URL tests (the fetch allowlist opens 127.0.0.1 for it)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(videos_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@dataclass(frozen=True)
class Videos:
    slideshow: media.MadeVideo
    static: media.MadeVideo
    vfr: media.MadeVideo
    long: media.MadeVideo
    headless: media.MadeVideo
    zip: Path
    tone: Path


@pytest.fixture(scope="module")
def videos(videos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Videos:
    cut = tmp_path_factory.mktemp("cut")
    return Videos(
        slideshow=media.slideshow(videos_dir),
        # 3 s of one shot, then 1 s of another.
        static=media.slideshow(videos_dir, (("chelsea", 75), ("coffee", 25)), name="static.mp4"),
        vfr=media.variable_rate(videos_dir),
        # Longer than the synchronous limit: 5 fps keeps it small.
        long=media.slideshow(videos_dir, (("astronaut", 25), ("rocket", 25), ("coffee", 20)), fps=5,
                             name="long.mp4"),
        headless=media.truncated(cut, faststart=False),
        zip=media.zip_as_mp4(videos_dir),
        tone=media.audio_only(videos_dir),
    )


@dataclass(frozen=True)
class Kit:
    client: Bus
    head: HeadRef
    model_id: str
    tmp_dir: Path  # where the service keeps downloads while it works on them

    def request(self, video: MediaInput, every_ms: int = 200, **kw: Any) -> TagVideoRequest:
        return TagVideoRequest(head=self.head, tags=list(TAGS.values()), video=video, every_ms=every_ms, **kw)

    async def tag(self, video: MediaInput, every_ms: int = 200, **kw: Any) -> TagVideoReply:
        return await self.client.request(VIDEO_TAG, self.request(video, every_ms, **kw), TagVideoReply)

    async def upload(self, path: Path) -> MediaInput:
        key = f"test-{secrets.token_hex(8)}"
        store = await self.client.js.object_store(BLOBS_BUCKET)
        await store.put(key, await asyncio.to_thread(path.read_bytes))
        return MediaInput(blob_key=key, name=path.name)


def _models_root(kind: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    if kind == "tiny":
        root = tmp_path_factory.mktemp("models")
        build_grid_model(root / "image" / "tiny-grid")
        return root, "image/tiny-grid"
    root = Path(os.environ.get("KASHF_MODELS_DIR", REPO / "models"))
    if not (root / REAL_IMAGE_MODEL / "manifest.json").is_file():
        pytest.skip(f"no built image model under {root} (run `make models`)")
    return root, REAL_IMAGE_MODEL


@pytest.fixture(scope="module", params=["tiny", pytest.param("real", marks=pytest.mark.models)])
async def kit(
    request: pytest.FixtureRequest, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Kit]:
    """video_service set up in this process (as ``python -m video_service`` does), and a client bus."""
    root, model = _models_root(request.param, tmp_path_factory)
    tmp_dir = tmp_path_factory.mktemp("downloads")
    settings = VideoServiceSettings(
        nats_url=nats_url, models_dir=root, image_model=model, device="cpu",
        fetch_allow_hosts="127.0.0.1", sync_video_seconds=SYNC_S, job_ack_wait_s=5.0, tmp_dir=tmp_dir,
    )
    encoder = await asyncio.to_thread(ImageEncoder, settings.image_model_dir, "cpu")
    bus = await Bus.connect(nats_url, "video_service")
    readiness: Readiness = await setup(settings, bus, encoder)
    client = await Bus.connect(nats_url, "test-client")
    dataset_id = 700_000 + secrets.randbelow(100_000)  # the heads bucket outlives this module
    await store_head(client.js, dataset_id, await asyncio.to_thread(fit_head, encoder))
    yield Kit(client, HeadRef(dataset_id=dataset_id, version=1), encoder.model_id, tmp_dir)
    await client.close()
    await stop_service(bus, readiness, 10.0)


def tag_ids(frame: Any) -> list[int]:
    return [t.id for t in frame.tags]


def expected_ids(photo: str) -> list[int]:
    return [TAGS[photo].id] if photo in TAGS else [UNKNOWN]


def check_against_stream(made: media.MadeVideo, reply: TagVideoReply) -> None:
    """Each returned frame's index, time and tags match what the stream shows at that index."""
    stream = dict(media.plain_decode(made.path))
    for frame in reply.frames:
        t = stream[frame.frame]
        assert frame.time == format_time(t)
        assert tag_ids(frame) == expected_ids(made.photo_at(t)), (frame.frame, t)


async def test_upload_returns_one_frame_per_shot_with_its_tag(kit: Kit, videos: Videos) -> None:
    reply = await kit.tag(await kit.upload(videos.slideshow.path), every_ms=200)
    assert reply.model_id == kit.model_id
    # Four 1-second shots at 25 fps: the first sampled frame of each shot, with that shot's tag.
    assert [(f.frame, f.time, tag_ids(f)) for f in reply.frames] == [
        (0, "0:00:00", [101]), (25, "0:00:01", [102]), (50, "0:00:02", [103]), (75, "0:00:03", [UNKNOWN]),
    ]
    assert all(0 < t.probability <= 1 for f in reply.frames for t in f.tags)
    check_against_stream(videos.slideshow, reply)
    assert list(kit.tmp_dir.iterdir()) == []


async def test_long_static_shot_comes_back_once(kit: Kit, videos: Videos) -> None:
    reply = await kit.tag(await kit.upload(videos.static.path), every_ms=100)
    # 30 samples of the 3-second shot: the tag set never changes, so one frame stands for all.
    assert [(f.frame, tag_ids(f)) for f in reply.frames] == [(0, [103]), (75, [102])]


async def test_url_variable_frame_rate_frames_and_times_follow_timestamps(
        kit: Kit, videos: Videos, http_base: str) -> None:
    url = f"{http_base}/{videos.vfr.path.name}"
    reply = await kit.tag(MediaInput(url=url), every_ms=100)
    # The photos change inside long frame gaps (at 1.14 s and 2.22 s): index and time are the stream's.
    assert [f.time for f in reply.frames] == ["0:00:00", "0:00:01", "0:00:02"]
    assert [tag_ids(f) for f in reply.frames] == [[101], [102], [UNKNOWN]]
    firsts = [videos.vfr.frame_photos.index(p) for p in ("astronaut", "coffee", "rocket")]
    assert [f.frame for f in reply.frames] == firsts
    check_against_stream(videos.vfr, reply)


async def test_min_frame_diff_and_duration_limit_the_analysis(kit: Kit, videos: Videos) -> None:
    ref = await kit.upload(videos.slideshow.path)
    request = kit.request(ref, every_ms=40, min_frame_diff=30, duration_s=2.5)
    reply = await kit.client.request(VIDEO_TAG, request, ServiceReply)
    # Of the 63 frames in the first 2.5 s only the three after a cut differ enough to be analysed.
    assert reply.analysed_frames == 3
    assert [(f.frame, [t.id for t in f.tags]) for f in reply.frames] == [(0, [101]), (25, [102]), (50, [103])]


@pytest.mark.parametrize("what", ["zip", "tone", "headless", "zip_url"])
async def test_non_videos_are_415_and_the_service_keeps_serving(
        kit: Kit, videos: Videos, http_base: str, what: str) -> None:
    if what == "zip_url":
        ref = MediaInput(url=f"{http_base}/{videos.zip.name}")
    else:
        path = {"zip": videos.zip, "tone": videos.tone, "headless": videos.headless.path}[what]
        ref = await kit.upload(path)
    with pytest.raises(UnsupportedMedia) as err:
        await kit.tag(ref)
    assert err.value.status == 415
    assert list(kit.tmp_dir.iterdir()) == []  # the download is gone with the failure
    reply = await kit.tag(await kit.upload(videos.slideshow.path), every_ms=1000)
    assert [tag_ids(f) for f in reply.frames] == [[101], [102], [103], [UNKNOWN]]


async def test_missing_upload_is_404(kit: Kit) -> None:
    with pytest.raises(NotFound):
        await kit.tag(MediaInput(blob_key="test-never-uploaded"))


@pytest.mark.parametrize(("params", "code"), [({"every_ms": 0}, "bad_every_ms"),
                                              ({"duration_s": -1}, "bad_duration"),
                                              ({"min_frame_diff": 256}, "bad_min_frame_diff")])
async def test_bad_sampling_params_are_400_before_any_download(
        kit: Kit, params: dict[str, Any], code: str) -> None:
    request = kit.request(MediaInput(blob_key="test-never-uploaded")).model_copy(update=params)
    with pytest.raises(BadRequest) as err:  # not the missing upload's 404: nothing was fetched
        await kit.client.request(VIDEO_TAG, request, TagVideoReply)
    assert err.value.status == 400 and err.value.error_code == code


async def test_video_longer_than_sync_limit_is_400_unless_duration_cuts_it(kit: Kit, videos: Videos) -> None:
    ref = await kit.upload(videos.long.path)  # 14 s, the limit is 6 s
    with pytest.raises(BadRequest) as err:
        await kit.tag(ref, every_ms=1000)
    assert err.value.status == 400
    assert err.value.error_code == "video_too_long_for_sync"
    assert '"async": true' in err.value.detail
    reply = await kit.tag(ref, every_ms=1000, duration_s=SYNC_S)
    assert [(f.time, tag_ids(f)) for f in reply.frames] == [("0:00:00", [101]), ("0:00:05", [UNKNOWN])]


async def poll(kit: Kit, account_id: int, job_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """The job as the API answers it (JSON), once it is over."""
    async with asyncio.timeout(timeout_s):
        while True:
            job = await read_video_job(kit.client, account_id, job_id)
            if job.state in ("done", "failed"):
                return dict(json.loads(job.model_dump_json()))
            await asyncio.sleep(0.1)


async def test_async_job_tags_a_long_video_end_to_end(kit: Kit, videos: Videos) -> None:
    ref = await kit.upload(videos.long.path)
    url_ref = MediaInput(url="http://127.0.0.1:9/never.mp4")  # nothing listens: that video fails alone
    queued = await submit_video_job(
        kit.client, account_id=7, head=kit.head, tags=list(TAGS.values()),
        videos=[MediaItem("long.mp4", ref, uploaded=True), MediaItem(url_ref.url or "", url_ref)],
        every_ms=1000, duration_s=None, min_frame_diff=0,
    )
    assert queued.state == "queued"
    job = await poll(kit, 7, queued.job_id)
    assert job["state"] == "done" and job["error"] is None
    long_video, unreachable = job["result"]
    # The whole 14 s, past the synchronous limit, in the synchronous answer's shape.
    assert long_video["video_file"] == "long.mp4"
    assert [(f["frame"], f["time"], [t["id"] for t in f["tags"]]) for f in long_video["frames"]] == [
        (0, "0:00:00", [101]), (25, "0:00:05", [UNKNOWN]), (50, "0:00:10", [102]),
    ]
    assert {"id", "probability", "title"} == set(long_video["frames"][0]["tags"][0])
    assert unreachable["video_url"] == url_ref.url and unreachable["frames"] == []
    assert "connect" in unreachable["error"]
    # Another account cannot see the job; the upload is removed once the job is over.
    with pytest.raises(NotFound):
        await read_video_job(kit.client, 8, queued.job_id)
    store = await kit.client.js.object_store(BLOBS_BUCKET)
    with pytest.raises((nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError)):
        await store.get(ref.blob_key or "")


async def test_async_job_of_only_bad_videos_fails_with_their_error(kit: Kit, videos: Videos) -> None:
    ref = await kit.upload(videos.zip)
    queued = await submit_video_job(
        kit.client, account_id=7, head=kit.head, tags=list(TAGS.values()),
        videos=[MediaItem("clip.mp4", ref, uploaded=True)], every_ms=1000, duration_s=None, min_frame_diff=0,
    )
    job = await poll(kit, 7, queued.job_id)
    assert job["state"] == "failed"
    assert job["error"]["error"] == "unsupported_media"
    assert job["result"] == [{"video_file": "clip.mp4", "error": job["error"]["detail"], "frames": []}]


async def test_unknown_job_is_404(kit: Kit) -> None:
    with pytest.raises(NotFound):
        await read_video_job(kit.client, 7, "vj" + "0" * 32)
    with pytest.raises(NotFound):
        await read_video_job(kit.client, 7, "kashf.>")


async def test_video_job_route_answers_its_owner_only(
        kit: Kit, videos: Videos, database_url: str, nats_url: str) -> None:
    """POST /api/video_job/ through the real gateway app (its auth and error rendering)."""
    settings = make_settings(database_url, nats_url)
    async with running(settings) as gw:
        gw.app.include_router(video_jobs_router())
        owner, other = f"vowner-{secrets.token_hex(4)}", f"vother-{secrets.token_hex(4)}"
        owner_token, other_token = await gw.token(owner), await gw.token(other)
        rows = await sql(database_url, "SELECT id FROM account WHERE name=$1", owner)
        account_id = int(rows[0]["id"])
        ref = await kit.upload(videos.slideshow.path)
        queued = await submit_video_job(
            kit.client, account_id=account_id, head=kit.head, tags=list(TAGS.values()),
            videos=[MediaItem("slideshow.mp4", ref, uploaded=True)], every_ms=1000, duration_s=None,
            min_frame_diff=0,
        )
        await poll(kit, account_id, queued.job_id)
        body = {"job_id": queued.job_id}
        for path in ("/api/video_job/", "/api/video_job"):
            response = await gw.post(path, body, owner_token)
            assert response.status_code == 200
            job = response.json()
            assert job["state"] == "done" and job["error"] is None
            assert [[t["id"] for t in f["tags"]] for f in job["result"][0]["frames"]] == [
                [101], [102], [103], [UNKNOWN]]
        response = await gw.post("/api/video_job/", body, other_token)
        assert response.status_code == 404 and response.json()["error"] == "not_found"
        assert (await gw.post("/api/video_job/", body, None)).status_code == 401
