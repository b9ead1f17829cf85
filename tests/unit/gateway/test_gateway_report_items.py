"""report_items: labels on stored items by id (the label queue's and search's way to answer), on the real app,
Postgres and NATS."""

from __future__ import annotations

import json

from tests.unit.gateway.harness import Gateway, sql
from tests.unit.gateway.test_gateway_errors import assert_error
from tests.unit.gateway.test_gateway_items import _list, _tag, _texts


async def test_report_items_labels_stored_items_without_sending_them_again(gw: Gateway) -> None:
    token = await gw.token("acme")
    good, bad = await _tag(gw, token, "reviews", "good"), await _tag(gw, token, "reviews", "bad")
    first, second = await _texts(gw, token, good, ["خوب بود", "بد بود"])
    outbox_before = len(await sql(gw.settings.database_url, "SELECT id FROM outbox"))

    answer = await gw.post("/api/report_items/", [
        {"item_id": second, "tag_id": good, "positive": False},  # replaces the earlier label
        {"item_id": second, "tag_id": bad, "positive": True},
        {"item_id": first, "tag_id": bad, "positive": False},
    ], token)
    assert answer.status_code == 200, answer.text
    assert answer.json() == [
        {"report": json.dumps([[good, False], [bad, True]], separators=(",", ":")), "id": second},
        {"report": json.dumps([[good, False], [bad, True]], separators=(",", ":")), "id": second},
        {"report": json.dumps([[good, True], [bad, False]], separators=(",", ":")), "id": first},
    ]
    listed = {item["id"]: item["reports"] for item in (await _list(gw, token, dataset="reviews"))["items"]}
    assert listed == {first: [[good, True], [bad, False]], second: [[good, False], [bad, True]]}
    info = (await gw.post("/api/dataset_info/", {"dataset": "reviews"}, token)).json()
    assert (info["report_count"], info["data_count"]) == (4, 2)
    # Each written report reaches the trainer like any other (a debounced refit).
    events = await sql(gw.settings.database_url, "SELECT msg_id FROM outbox ORDER BY id")
    assert len(events) == outbox_before + 3


async def test_report_items_makes_a_kept_input_a_reported_item(gw: Gateway) -> None:
    token = await gw.token("acme")
    good = await _tag(gw, token, "reviews", "good")
    (dataset,) = await sql(gw.settings.database_url, "SELECT id FROM dataset WHERE name = 'reviews'")
    (row,) = await sql(gw.settings.database_url,
                       "INSERT INTO data_item (dataset_id, kind, content_hash, content, origin)"
                       f" VALUES ({dataset['id']}, 'text', 'h-kept', 'kept from a tag call', 'input') RETURNING id")
    assert (await _list(gw, token, dataset="reviews"))["items"] == []

    answer = await gw.post("/api/report_items/", [{"item_id": row["id"], "tag_id": good, "positive": True}], token)
    assert answer.status_code == 200, answer.text
    (item,) = await sql(gw.settings.database_url, f"SELECT origin FROM data_item WHERE id = {row['id']}")
    assert item["origin"] == "report"
    assert [i["id"] for i in (await _list(gw, token, dataset="reviews"))["items"]] == [row["id"]]


async def test_report_items_refuses_what_it_cannot_label_and_writes_nothing(gw: Gateway) -> None:
    alice, bob = await gw.token("alice"), await gw.token("bob")
    good = await _tag(gw, alice, "reviews", "good")
    elsewhere = await _tag(gw, alice, "other", "x")
    (item,) = await _texts(gw, alice, good, ["عالی بود"])
    bobs_tag = await _tag(gw, bob, "reviews", "good")
    before = await sql(gw.settings.database_url, "SELECT id, tag_id, positive FROM report ORDER BY id")

    def one(item_id: int, tag_id: int) -> list[dict[str, object]]:
        return [{"item_id": item_id, "tag_id": tag_id, "positive": False}]

    assert_error(await gw.post("/api/report_items/", one(item, elsewhere), alice), 400, "not in the dataset")
    assert_error(await gw.post("/api/report_items/", one(item + 1000, good), alice), 404, f"item {item + 1000}")
    assert_error(await gw.post("/api/report_items/", one(item, bobs_tag), alice), 404, f"tag {bobs_tag}")
    # Bob can neither label Alice's item with his tag nor with hers.
    assert_error(await gw.post("/api/report_items/", one(item, bobs_tag), bob), 404, f"item {item}")
    assert_error(await gw.post("/api/report_items/", one(item, good), bob), 404, f"tag {good}")
    assert_error(await gw.post("/api/report_items/", [], alice), 400)
    for body in ([{"item_id": item, "tag_id": good}], [{"item_id": -1, "tag_id": good, "positive": True}],
                 [{"item_id": item, "tag_id": good, "positive": "yes"}], {"item_id": item}):
        assert_error(await gw.post("/api/report_items/", body, alice), 422)
    assert await sql(gw.settings.database_url, "SELECT id, tag_id, positive FROM report ORDER BY id") == before
