"""Two accounts: to one, the other's datasets, tags and items do not exist (404), whatever the id or name."""

from __future__ import annotations

from shared.subjects import TEXT_TAG
from tests.unit.gateway.harness import Gateway, responder, sql


async def test_another_accounts_data_is_404_on_every_endpoint(gw: Gateway, nats_url: str) -> None:
    alice, bob = await gw.token("alice"), await gw.token("bob")
    await gw.post("/api/create_dataset/", {"dataset": "reviews", "kind": "text"}, alice)
    await gw.post("/api/create_dataset/", {"dataset": "photos", "kind": "image"}, alice)
    tag = (await gw.post("/api/create_tag/", {"dataset": "reviews", "title": "خوب"}, alice)).json()["tag_id"]
    photo_tag = (await gw.post("/api/create_tag/", {"dataset": "photos", "title": "برج"}, alice)).json()[
        "tag_id"
    ]
    report = [{"content": "عالی بود", "tag_id": tag, "positive": True}]
    assert (await gw.post("/api/report_text_tags/", report, alice)).status_code == 200

    async def never_called(data: bytes) -> bytes:
        raise AssertionError("bob's request must not reach a model service")

    async with responder(nats_url, TEXT_TAG, never_called):
        by_name = [
            ("/api/tag_texts/", {"dataset": "reviews", "contents": ["عالی"]}),
            ("/api/tag_images/", {"dataset": "photos", "image_urls": ["https://example.org/a.jpg"]}),
            ("/api/tag_video_frames/", {"dataset": "photos", "video_urls": ["https://example.org/a.mp4"]}),
            ("/api/train_dataset/", {"dataset": "reviews"}),
            ("/api/dataset_info/", {"dataset": "reviews"}),
        ]
        by_id = [
            ("/api/report_text_tags/", [{"content": "عالی بود", "tag_id": tag, "positive": False}]),
            (
                "/api/report_image_tags/",
                [{"image_url": "https://example.org/a.jpg", "tag_id": photo_tag, "positive": True}],
            ),
            ("/api/update_tag/", {"tag_id": tag, "title": "hijacked", "active": False}),
            ("/api/update_tag/", {"dataset": "reviews", "tag_id": tag, "title": "hijacked"}),
            ("/api/delete_tag/", {"tag_id": tag}),
        ]
        for path, body in by_name + by_id:
            response = await gw.post(path, body, bob)
            assert response.status_code == 404, (path, response.text)
            assert "alice" not in response.text

    assert (await gw.post("/api/list_datasets/", {}, bob)).json() == []
    # Bob may use the same names: his own dataset, separate from Alice's.
    own = await gw.post("/api/create_tag/", {"dataset": "reviews", "title": "بد"}, bob)
    assert own.status_code == 200
    bob_info = (await gw.post("/api/dataset_info/", {"dataset": "reviews"}, bob)).json()
    assert [t["title"] for t in bob_info["tags"]] == ["بد"] and bob_info["report_count"] == 0

    alice_info = (await gw.post("/api/dataset_info/", {"dataset": "reviews"}, alice)).json()
    assert alice_info["state"] == "untrained"
    assert alice_info["tags"] == [
        {"title": "خوب", "id": tag, "reports": 1, "predictions": 0, "evaluation": None, "threshold": None}
    ]
    labels = await sql(gw.settings.database_url, "SELECT positive FROM report WHERE tag_id=$1", tag)
    assert [r["positive"] for r in labels] == [True]


async def test_a_report_mixing_own_and_foreign_tags_writes_nothing(gw: Gateway) -> None:
    alice, bob = await gw.token("alice"), await gw.token("bob")
    alice_tag = (await gw.post("/api/create_tag/", {"dataset": "r", "title": "a"}, alice)).json()["tag_id"]
    bob_tag = (await gw.post("/api/create_tag/", {"dataset": "r", "title": "b"}, bob)).json()["tag_id"]
    mixed = [
        {"content": "متن اول", "tag_id": bob_tag, "positive": True},
        {"content": "متن دوم", "tag_id": alice_tag, "positive": True},
    ]
    response = await gw.post("/api/report_text_tags/", mixed, bob)
    assert response.status_code == 404
    assert response.json()["detail"] == f"tag {alice_tag} not found"
    assert await sql(gw.settings.database_url, "SELECT id FROM report") == []
