"""Video frames end to end: an image dataset trained on photos tags a slideshow of the same places."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.fileserver import file_server
from tests.integration.media import jpeg, variant
from tests.integration.test_text_flow import wait_trained
from tests.media_video import PHOTO_NAMES, photo_full, slideshow, zip_as_mp4

pytestmark = pytest.mark.integration


async def train_places(api: httpx.AsyncClient, dataset: str) -> dict[str, int]:
    await api.post("/api/create_dataset/", json={"dataset": dataset, "title": "مکان‌ها", "kind": "image"})
    tag_ids = {name: (await api.post("/api/create_tag/", json={"dataset": dataset, "title": name})).json()["tag_id"]
               for name in PHOTO_NAMES}
    files = {f"/{n}-{k}.jpg": ("image/jpeg", jpeg(variant(photo_full(n), k))) for n in PHOTO_NAMES for k in range(4)}
    with file_server(files) as server:
        base = server.base
        r = await api.post("/api/report_image_tags/", json=[
            {"image_url": f"{base}/{n}-{k}.jpg", "tag_id": tag_ids[n], "positive": True}
            for n in PHOTO_NAMES for k in range(4)
        ])
        assert r.status_code == 200, r.text
    await api.post("/api/train_dataset/", json={"dataset": dataset})
    await wait_trained(api, dataset)
    return tag_ids


async def test_tag_video_frames_upload_and_async(api: httpx.AsyncClient, tmp_path: Path) -> None:
    tag_ids = await train_places(api, "video-places")
    made = slideshow(tmp_path)  # four 1 s shots at 25 fps: astronaut, coffee, chelsea, rocket
    video = made.path.read_bytes()
    r = await api.post("/api/tag_video_frames/",
                       data={"dataset": "video-places", "every_ms": "200", "min_frame_diff": "10"},
                       files=[("video_file", ("slideshow.mp4", video, "video/mp4"))])
    assert r.status_code == 200, r.text
    [result] = r.json()
    assert result["video_file"] == "slideshow.mp4"
    frames = result["frames"]
    # One returned frame per shot, on the right shot, with that place's tag first.
    assert [f["tags"][0]["id"] for f in frames] == [tag_ids[n] for n in PHOTO_NAMES]
    for f in frames:
        assert made.frame_photos[f["frame"]] == next(n for n, i in tag_ids.items() if i == f["tags"][0]["id"])
        assert f["time"] == f"0:00:0{int(made.frame_times[f['frame']])}"

    # The asynchronous form: submit, then poll.
    r = await api.post("/api/tag_video_frames/",
                       data={"dataset": "video-places", "every_ms": "200", "min_frame_diff": "10", "async": "true"},
                       files=[("video_file", ("slideshow.mp4", video, "video/mp4"))])
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["state"] == "queued" and job["job_id"]
    for _ in range(240):
        polled = (await api.post("/api/video_job/", json={"job_id": job["job_id"]})).json()
        if polled["state"] in ("done", "failed"):
            break
        await asyncio.sleep(0.5)
    assert polled["state"] == "done", polled
    assert polled["result"] == [result]


async def test_bad_video_is_a_clear_error_and_service_survives(api: httpx.AsyncClient, tmp_path: Path) -> None:
    await api.post("/api/create_dataset/", json={"dataset": "video-bad", "title": "b", "kind": "image"})
    zipped = zip_as_mp4(tmp_path).read_bytes()
    r = await api.post("/api/tag_video_frames/", data={"dataset": "video-bad", "every_ms": "500"},
                       files=[("video_file", ("clip.mp4", zipped, "video/mp4"))])
    assert r.status_code == 415, r.text
    assert r.json()["error"] == "unsupported_media" and "video" in r.json()["detail"]
    made = slideshow(tmp_path, name="ok.mp4")
    r = await api.post("/api/tag_video_frames/", data={"dataset": "video-bad", "every_ms": "500"},
                       files=[("video_file", ("ok.mp4", made.path.read_bytes(), "video/mp4"))])
    assert r.status_code == 200, r.text
    assert r.json()[0]["frames"][0]["tags"][0]["id"] == 0  # untrained: the unknown tag
