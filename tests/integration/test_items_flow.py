"""Curating an image dataset as a new user would, on the real processes: upload photos from disk, train,
list them back and fetch each kept copy, delete a wrong report, retrain, see version 2, roll back to version 1
and see version 1's predictions come back."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from devtools.stack import Stack
from tests.integration.media import jpeg, photos, variant
from tests.integration.test_text_flow import wait_trained

pytestmark = pytest.mark.integration

PER_TAG = 5
TAGS = ("cat", "coffee", "rocket")


async def test_upload_list_fetch_delete_retrain(
    api: httpx.AsyncClient, stack: Stack, other_token: str, tmp_path: Path
) -> None:
    r = await api.post("/api/create_dataset/", json={"dataset": "shelf", "title": "قفسه", "kind": "image"})
    assert r.status_code == 200, r.text
    tag_ids = {}
    for name in TAGS:
        tag_ids[name] = (await api.post("/api/create_tag/", json={"dataset": "shelf", "title": name})).json()["tag_id"]
    for name in TAGS:  # the photos sit on disk, as a user's would
        for k in range(PER_TAG):
            (tmp_path / f"{name}-{k}.jpg").write_bytes(jpeg(variant(photos()[name], k)))
    (tmp_path / "notes.jpg").write_bytes(b"%PDF-1.4 not a photo")

    reported: dict[str, int] = {}
    for name in TAGS:
        paths = [tmp_path / f"{name}-{k}.jpg" for k in range(PER_TAG)]
        if name == "cat":  # a coffee photo filed under cat by mistake, and a file that is no image
            paths += [tmp_path / "coffee-0.jpg", tmp_path / "notes.jpg"]
        handles = [path.open("rb") for path in paths]
        try:
            r = await api.post("/api/report_image_tags/", data={"tag_id": str(tag_ids[name])},
                               files=[("image_file", (p.name, h, "image/jpeg")) for p, h in zip(paths, handles,
                                                                                              strict=True)])
        finally:
            for handle in handles:
                handle.close()
        assert r.status_code == 200, r.text
        answers = r.json()
        assert [a["image_file"] for a in answers] == [p.name for p in paths]
        for answer in answers:
            if answer["image_file"] == "notes.jpg":
                assert "error" in answer and "id" not in answer, answer
            else:
                assert "error" not in answer, answer
                reported[f"{name}/{answer['image_file']}"] = answer["id"]
    wrong_item = reported["cat/coffee-0.jpg"]
    assert wrong_item == reported["coffee/coffee-0.jpg"]  # same bytes, one item, two labels
    await api.post("/api/train_dataset/", json={"dataset": "shelf"})
    info = await wait_trained(api, "shelf")
    assert (info["report_count"], info["data_count"]) == (3 * PER_TAG + 1, 3 * PER_TAG)
    assert info["version"] == 1
    v1 = await _probabilities(api)

    # Every item comes back once over the pages, newest first, with a kept copy to look at.
    listed: list[dict] = []
    cursor = None
    while True:
        body = {"dataset": "shelf", "limit": 4, **({"cursor": cursor} if cursor else {})}
        page = (await api.post("/api/list_items/", json=body)).json()
        listed += page["items"]
        if (cursor := page["next_cursor"]) is None:
            break
    assert [item["id"] for item in listed] == sorted(set(reported.values()), reverse=True)
    wrong = next(item for item in listed if item["id"] == wrong_item)
    assert sorted(wrong["reports"]) == sorted([[tag_ids["cat"], True], [tag_ids["coffee"], True]])
    for item in listed:
        image = await api.get(item["image"])
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(image.content)) as kept:
            assert kept.format == "JPEG" and min(kept.size) <= 256
    async with httpx.AsyncClient(base_url=stack.url, headers={"Authorization": f"Token {other_token}"}) as other:
        assert (await other.get(listed[0]["image"])).status_code == 404

    r = await api.post("/api/delete_report/", json={"item_id": wrong_item, "tag_id": tag_ids["cat"]})
    assert r.status_code == 200 and r.json()["deleted"] is True, r.text
    cats = (await api.post("/api/list_items/", json={"dataset": "shelf", "tag_id": tag_ids["cat"]})).json()
    assert len(cats["items"]) == PER_TAG and wrong_item not in [item["id"] for item in cats["items"]]
    await api.post("/api/train_dataset/", json={"dataset": "shelf"})
    info = await wait_trained(api, "shelf")
    assert (info["report_count"], info["data_count"]) == (3 * PER_TAG, 3 * PER_TAG)
    assert {tag["title"]: tag["reports"] for tag in info["tags"]} == {name: PER_TAG for name in TAGS}
    assert info["version"] == 2
    versions = (await api.post("/api/list_versions/", json={"dataset": "shelf"})).json()
    assert [(v["version"], v["state"]) for v in versions] == [(2, "live"), (1, "kept")]
    v2 = await _probabilities(api)
    assert all(len(tags) == len(TAGS) for tags in v2.values()), v2  # min_probability 0: every tag scored

    r = await api.post("/api/use_version/", json={"dataset": "shelf", "version": 1})
    assert r.status_code == 200 and r.json()["version"] == 1, r.text
    assert await _probabilities(api) == v1
    r = await api.post("/api/use_version/", json={"dataset": "shelf", "version": 2})
    assert r.status_code == 200 and r.json()["version"] == 2, r.text
    assert await _probabilities(api) == v2


async def _probabilities(api: httpx.AsyncClient) -> dict[str, dict[int, float]]:
    """Every tag's probability (min_probability 0) for photos no report used, by file name."""
    files = [(f"unseen-{name}.jpg", jpeg(variant(photos()[name], 40))) for name in TAGS]
    r = await api.post("/api/tag_images/", data={"dataset": "shelf", "min_probability": "0"},
                       files=[("image_file", (name, data, "image/jpeg")) for name, data in files])
    assert r.status_code == 200, r.text
    return {element["image_file"]: {t["id"]: t["probability"] for t in element["tags"]} for element in r.json()}
