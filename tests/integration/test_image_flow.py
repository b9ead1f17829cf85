"""Images end to end on the real processes: report photos by URL, train, tag by URL and by upload."""

from __future__ import annotations

import httpx
import pytest

from tests.fileserver import file_server
from tests.integration.media import jpeg, photos, variant
from tests.integration.test_text_flow import wait_trained

pytestmark = pytest.mark.integration

TRAIN_VARIANTS = range(4)
UNSEEN_VARIANTS = range(10, 13)


async def test_report_train_tag_images(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/create_dataset/", json={"dataset": "places", "title": "لحظه", "kind": "image"})
    assert r.status_code == 200, r.text
    tag_ids = {}
    for name in photos():
        r = await api.post("/api/create_tag/", json={"dataset": "places", "title": name})
        tag_ids[name] = r.json()["tag_id"]

    files = {}
    for name, photo in photos().items():
        for k in [*TRAIN_VARIANTS, *UNSEEN_VARIANTS]:
            files[f"/{name}-{k}.jpg"] = ("image/jpeg", jpeg(variant(photo, k)))
    files["/not-an-image.jpg"] = ("image/jpeg", b"<html>nope</html>")

    with file_server(files) as server:
        base = server.base
        reports = [
            {"image_url": f"{base}/{name}-{k}.jpg", "tag_id": tag_ids[name], "positive": True}
            for name in photos() for k in TRAIN_VARIANTS
        ]
        r = await api.post("/api/report_image_tags/", json=reports)
        assert r.status_code == 200, r.text
        assert len({x["id"] for x in r.json()}) == len(reports)
        assert r.json()[0]["report"] == f"[[{tag_ids['cat']},true]]"

        await api.post("/api/train_dataset/", json={"dataset": "places"})
        info = await wait_trained(api, "places")
        assert info["report_count"] == len(reports) and info["data_count"] == len(reports)

        urls = [f"{base}/{name}-{k}.jpg" for name in photos() for k in UNSEEN_VARIANTS]
        r = await api.post("/api/tag_images/", json={"dataset": "places",
                                                       "image_urls": [*urls, f"{base}/not-an-image.jpg",
                                                                      f"{base}/missing.jpg"]})
        assert r.status_code == 200, r.text
        out = r.json()
        assert [x["image_url"] for x in out[: len(urls)]] == urls
        for x, url in zip(out, urls, strict=False):
            name = url.rsplit("/", 1)[1].split("-")[0]
            assert x["tags"][0]["id"] == tag_ids[name], x
        bad, missing = out[-2:]
        assert bad["tags"] == [] and bad["error"]
        assert missing["tags"] == [] and "404" in missing["error"]

    # The stored copy keeps reports valid after the URLs are gone (server closed): retraining works.
    await api.post("/api/train_dataset/", json={"dataset": "places"})
    await wait_trained(api, "places")

    upload = [("image_file", (f"{name}.jpg", jpeg(variant(photo, 20)), "image/jpeg"))
              for name, photo in photos().items()]
    r = await api.post("/api/tag_images/", data={"dataset": "places"}, files=upload)
    assert r.status_code == 200, r.text
    assert [x["image_file"] for x in r.json()] == [f"{n}.jpg" for n in photos()]
    for x, name in zip(r.json(), photos(), strict=True):
        assert x["tags"][0]["id"] == tag_ids[name], x


async def test_blocked_address_is_refused_per_item(api: httpx.AsyncClient) -> None:
    await api.post("/api/create_dataset/", json={"dataset": "blocked", "title": "b", "kind": "image"})
    r = await api.post("/api/tag_images/", json={"dataset": "blocked",
                                                   "image_urls": ["http://169.254.169.254/latest/meta-data/"]})
    assert r.status_code == 200, r.text
    [item] = r.json()
    assert item["tags"] == []
    assert "169.254.169.254" in item["error"]
