"""Each endpoint of SPEC.md through the client, against the real stack: typed answers with the values sent."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from devtools.stack import Stack
from kashf_client import AsyncClient, Client, ItemReport, TextReport
from tests.integration import media
from tests.integration.texts import DELIVERY, RECOMMEND, TRAIN, UNHAPPY

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(stack: Stack, token: str) -> str:
    """A text dataset with the reviews reported and one fit done."""
    dataset = "cli-endpoints"
    with Client(stack.url, token) as client:
        client.create_dataset(dataset, title="reviews", kind="text")
        ids = {title: client.create_tag(dataset, title).tag_id for title in TRAIN}
        client.report_text_tags([TextReport(content=t, tag_id=ids[title]) for title, texts in TRAIN.items()
                                 for t in texts])
        client.train_dataset(dataset)
        assert client.wait_trained(dataset, timeout_s=300).state == "trained"
    return dataset


def test_datasets_and_tags(stack: Stack, token: str, trained: str) -> None:
    with Client(stack.url, token) as client:
        listed = {d.dataset: d for d in client.list_datasets()}
        assert listed[trained].kind == "text" and listed[trained].title == "reviews"
        updated = client.update_dataset(trained, title="نظرات", keep_inputs=True)
        assert (updated.title, updated.keep_inputs) == ("نظرات", True)
        info = client.dataset_info(trained)
        assert info.title == "نظرات" and info.state == "trained" and info.version is not None
        assert {t.title for t in info.tags or []} == set(TRAIN)
        assert client.dataset_info(trained, tags=False).tags is None
        tag = client.create_tag(trained, "temporary")
        renamed = client.update_tag(tag.tag_id, title="renamed", active=False, threshold=0.7)
        assert (renamed.title, renamed.active) == ("renamed", False)
        assert client.update_tag(tag.tag_id, threshold=None).tag_id == tag.tag_id
        deleted = client.delete_tag(tag.tag_id)
        assert (deleted.dataset, deleted.deleted_reports) == (trained, 0)


def test_tagging_with_options(stack: Stack, token: str, trained: str) -> None:
    with Client(stack.url, token) as client:
        answers = client.tag_texts(trained, ["I recommend it, buy it now", "the courier came a week late"])
        assert [a.tags[0].title for a in answers] == [RECOMMEND, DELIVERY]
        top1 = client.tag_texts(trained, ["I recommend it but delivery was late"], top_k=1)
        assert len(top1[0].tags) == 1
        none = client.tag_texts(trained, ["I recommend it"], min_probability=0.999999)
        assert all(t.probability >= 0.99 or t.id == 0 for t in none[0].tags)


def test_items_pages_and_undo(stack: Stack, token: str, trained: str) -> None:
    with Client(stack.url, token) as client:
        first = client.list_items(trained, limit=5)
        assert len(first.items) == 5 and first.next_cursor
        every = list(client.iter_items(trained, page_size=4))
        assert len(every) == sum(len(t) for t in TRAIN.values()) == len({i.id for i in every})
        assert [i.id for i in every[:5]] == [i.id for i in first.items]
        tag_id = next(t.id for t in client.dataset_info(trained).tags or [] if t.title == UNHAPPY)
        unhappy = list(client.iter_items(trained, tag_id=tag_id))
        assert {i.content for i in unhappy} == set(TRAIN[UNHAPPY])
        before = client.dataset_info(trained).report_count
        item = unhappy[0]
        assert client.delete_report(item.report_ids[0]).deleted
        assert client.dataset_info(trained).report_count == before - 1
        client.report_text_tags([TextReport(content=item.content or "", tag_id=tag_id)])
        assert client.delete_report(item_id=item.id, tag_id=tag_id).deleted
        (again,) = client.report_items([ItemReport(item_id=item.id, tag_id=tag_id)])
        assert again.id == item.id and [tag_id, True] in json.loads(again.report or "[]")
        assert client.dataset_info(trained).report_count == before


def test_image_reports_from_files_and_the_kept_copy(stack: Stack, token: str) -> None:
    with Client(stack.url, token) as client:
        tag = client.create_tag("cli-endpoint-images", "cat")
        photo = media.photos()["cat"]
        files = [(f"cat{k}.jpg", media.jpeg(media.variant(photo, k))) for k in range(3)]
        reports = client.report_image_files(tag.tag_id, [*files, ("notes.jpg", b"not an image")])
        assert [r.error is None for r in reports] == [True, True, True, False]
        assert reports[0].labels == [(tag.tag_id, True)]
        items = client.list_items("cli-endpoint-images").items
        assert len(items) == 3 and all(i.image for i in items)
        assert client.item_image(items[0].id)[:2] == b"\xff\xd8"
        tagged = client.tag_image_files("cli-endpoint-images", files[:1])
        assert tagged[0].image_file == "cat0.jpg"


def test_versions_rollback(stack: Stack, token: str, trained: str) -> None:
    with Client(stack.url, token) as client:
        client.report_text_tags([TextReport(content="Best purchase I made, recommended",
                                            tag_id=next(t.id for t in client.dataset_info(trained).tags or []
                                                        if t.title == RECOMMEND))])
        client.train_dataset(trained, force=True)
        client.wait_trained(trained, timeout_s=300)
        versions = client.list_versions(trained)
        assert len(versions) >= 2 and [v.version for v in versions] == sorted((v.version for v in versions),
                                                                              reverse=True)
        assert sum(v.state == "live" for v in versions) == 1
        oldest = versions[-1].version
        info = client.use_version(trained, oldest)
        assert info.version == oldest
        assert next(v for v in client.list_versions(trained) if v.version == oldest).state == "live"


def test_suggestions_and_search(stack: Stack, token: str, trained: str) -> None:
    with Client(stack.url, token) as client:
        suggestions = client.suggest_labels(trained, limit=5)
        assert len(suggestions) <= 5 and all(s.reason in ("uncertain", "suspect") for s in suggestions)
        query = TRAIN[DELIVERY][0]
        hits = client.search(trained, text=query, limit=3)
        assert len(hits) == 3 and hits[0].content == query and hits[0].score > 0.99
        with pytest.raises(ValueError):
            client.search(trained, limit=3)


def test_webhooks(stack: Stack, token: str, trained: str) -> None:
    with Client(stack.url, token) as client:
        created = client.create_webhook("https://hooks.example.com/kashf", dataset=trained,
                                        events=["training.failed"])
        assert created.secret and created.events == ["training.failed"]
        listed = {w.id: w for w in client.list_webhooks()}
        assert listed[created.id].url == "https://hooks.example.com/kashf" and listed[created.id].secret is None
        assert client.delete_webhook(created.id).deleted
        assert created.id not in {w.id for w in client.list_webhooks()}


def test_export_streams_the_zip_to_a_file(stack: Stack, token: str, trained: str, tmp_path: Path) -> None:
    target = tmp_path / "out" / "export.zip"
    with Client(stack.url, token) as client:
        path = client.export_dataset(trained, target)
    assert path == target and not target.with_name("export.zip.part").exists()
    with zipfile.ZipFile(target) as archive:
        assert {"model.onnx", "kashf.json"} <= set(archive.namelist())
        meta = json.loads(archive.read("kashf.json"))
    assert meta  # the tags and thresholds travel with the model


async def test_the_async_client(stack: Stack, token: str, trained: str) -> None:
    async with AsyncClient(stack.url, token) as client:
        items = [i async for i in client.iter_items(trained, page_size=7)]
        first = await client.list_items(trained, limit=500)
        answers = await client.tag_texts(trained, ["ارسالش خیلی سریع بود"])
    assert [i.id for i in items] == [i.id for i in first.items] and first.next_cursor is None
    assert answers[0].tags[0].title == DELIVERY
