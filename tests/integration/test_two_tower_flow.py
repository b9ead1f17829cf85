"""A two-tower (open_clip) image model through the whole stack: tags from their titles alone (zero-shot), and a
model swap by configuration on the running stack, done as an operator does it.

Both models are tiny open_clip CLIPs trained for seconds on the test photos and their titles, exported as
`python -m modelbuild export-openclip --model local-dir:FOLDER` does (tests/integration/twotower.py). The stack here
(gateway, vision_service, trainer) has a database and a nats-server of its own: the swap restarts its vision
service on the other model."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import pytest
from PIL import Image

from devtools import servers
from devtools.stack import Stack, create_token
from modelkit.onnx.image import ImageEncoder
from shared import natsauth
from shared.db.migrate import upgrade
from tests.integration.conftest import NatsServer
from tests.integration.media import jpeg
from tests.integration.test_text_flow import wait_trained
from tests.integration.twotower import (
    SEED_A,
    SEED_B,
    TITLES,
    TRAIN_VARIANTS,
    UNSEEN_VARIANTS,
    export,
    train_tiny_clip,
    view,
)
from vision_service.service import zero_shot_probabilities

# Training and exporting two models, then starting a stack, come before the first test: on a busy 2-core
# machine that alone took over the default 300 s once.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

MODEL_A, MODEL_B = "image/tiny-clip-a", "image/tiny-clip-b"


@dataclass
class TwoTowerStack:
    stack: Stack
    token: str
    models: Path
    admin_nats_url: str

    @property
    def model(self) -> str:
        """The configured image model (KASHF_IMAGE_MODEL)."""
        return self.stack.env["KASHF_IMAGE_MODEL"]

    def encoder(self, model: str | None = None) -> ImageEncoder:
        return ImageEncoder(self.models / (model or self.model), device="cpu")

    def swap(self, model: str) -> None:
        """What an operator does: set KASHF_IMAGE_MODEL and restart the image service on it."""
        self.stack.env = {**self.stack.env, "KASHF_IMAGE_MODEL": model}
        self.stack.stop("vision_service")
        self.stack.start("vision_service")
        self.stack.wait_ready(("vision_service",), timeout_s=120)

    @property
    def db_url(self) -> str:
        return self.stack.database_url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture(scope="module")
def two_tower(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoTowerStack]:
    root = tmp_path_factory.mktemp("two-tower")
    models = root / "models"
    started = time.monotonic()
    for rel, seed in ((MODEL_A, SEED_A), (MODEL_B, SEED_B)):
        name = rel.split("/")[1]
        export(train_tiny_clip(root / "src" / name, seed), models, name, root / "cache")
    print(f"\ntwo tiny open_clip models trained and exported in {time.monotonic() - started:.1f} s")
    passwords = servers.nats_passwords()
    nats = NatsServer(tmp_path_factory.mktemp("two-tower-nats"), passwords)
    database_url = asyncio.run(servers.create_database(pg_server, f"kashf_tt_{uuid.uuid4().hex[:10]}"))
    upgrade(database_url)
    log_dir = tmp_path_factory.mktemp("two-tower-logs")
    stack = Stack(database_url, nats.url, gateway_port=servers.free_port(), log_dir=log_dir,
                  services=("vision_service", "trainer", "gateway"),
                  env={"KASHF_MODELS_DIR": str(models), "KASHF_IMAGE_MODEL": MODEL_A,
                       "KASHF_TRAIN_DEBOUNCE_S": "0.5", "KASHF_ENVIRONMENT": "test", "KASHF_RATE_PER_MINUTE": "0"},
                  nats_passwords=passwords)
    try:
        stack.start_all()
        stack.wait_ready(timeout_s=240)
        yield TwoTowerStack(stack, create_token(database_url, "two-tower"), models,
                            natsauth.with_user(nats.url, "admin", passwords["admin"]))
    except BaseException:
        for log in sorted(log_dir.glob("*.log")):
            print(f"==== {log.name}\n{log.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        stack.stop_all()
        nats.stop()
        asyncio.run(servers.drop_database(pg_server, database_url.rsplit("/", 1)[1]))


@pytest.fixture
async def tt_api(two_tower: TwoTowerStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=two_tower.stack.url, headers={"Authorization": f"Token {two_tower.token}"},
                                 timeout=60.0) as client:
        yield client


def files(names: list[str], ks: range) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image_file", (f"{name}-{k}.jpg", jpeg(view(name, k)), "image/jpeg")) for name in names for k in ks]


async def make_dataset(api: httpx.AsyncClient, dataset: str) -> dict[str, int]:
    """An image dataset whose tags are the photos' titles; name -> tag id."""
    r = await api.post("/api/create_dataset/", json={"dataset": dataset, "title": dataset, "kind": "image"})
    assert r.status_code == 200, r.text
    ids = {}
    for name, title in TITLES.items():
        r = await api.post("/api/create_tag/", json={"dataset": dataset, "title": title})
        assert r.status_code == 200, r.text
        ids[name] = r.json()["tag_id"]
    return ids


async def report(api: httpx.AsyncClient, dataset: str, tag_ids: dict[str, int], names: list[str]) -> None:
    for name in names:
        r = await api.post("/api/report_image_tags/", data={"tag_id": str(tag_ids[name]), "positive": "true"},
                           files=files([name], TRAIN_VARIANTS))
        assert r.status_code == 200, r.text
        assert all("id" in x for x in r.json()), r.text


async def tag(api: httpx.AsyncClient, dataset: str, names: list[str], **fields: str) -> httpx.Response:
    return await api.post("/api/tag_images/", data={"dataset": dataset, **fields},
                          files=files(names, UNSEEN_VARIANTS))


def expected_zero_shot(enc: ImageEncoder, names: list[str], titles: list[str]) -> np.ndarray:
    """What the service must answer for the unseen views: the export run here, the service's own formula."""
    images = [Image.open(io.BytesIO(jpeg(view(name, k)))) for name in names for k in UNSEEN_VARIANTS]
    return zero_shot_probabilities(enc.encode(images), enc.encode_texts(titles))


def probabilities(item: dict[str, Any], tag_ids: list[int]) -> list[float]:
    got = {t["id"]: t["probability"] for t in item["tags"]}
    return [float(got.get(tag_id, 0.0)) for tag_id in tag_ids]


async def test_images_are_tagged_from_tag_titles_alone(two_tower: TwoTowerStack, tt_api: httpx.AsyncClient) -> None:
    ids = await make_dataset(tt_api, "zero-shot")
    names = list(TITLES)
    r = await tag(tt_api, "zero-shot", names)
    assert r.status_code == 200, r.text
    want = [ids[name] for name in names for _ in UNSEEN_VARIANTS]
    # No report, no head: every view gets its own photo's title, and only it (the softmax over the titles and
    # a "none" level lets at most one pass 0.5).
    assert [[t["id"] for t in item["tags"]] for item in r.json()] == [[w] for w in want], r.text

    r = await tag(tt_api, "zero-shot", names, min_probability="0")
    assert r.status_code == 200, r.text
    expected = expected_zero_shot(two_tower.encoder(), names, [TITLES[n] for n in names])
    got = np.array([probabilities(item, [ids[n] for n in names]) for item in r.json()])
    assert np.abs(got - expected).max() <= 0.006, (got, expected)  # the API rounds to 2 decimals

    # Trained on two tags: the head scores those, the titles still score the two it never saw.
    await report(tt_api, "zero-shot", ids, ["cat", "coffee"])
    r = await tt_api.post("/api/train_dataset/", json={"dataset": "zero-shot"})
    assert r.status_code == 200, r.text
    await wait_trained(tt_api, "zero-shot")
    unseen, seen = ["rocket", "astronaut"], ["cat", "coffee"]
    r = await tag(tt_api, "zero-shot", [*seen, *unseen], min_probability="0")
    assert r.status_code == 200, r.text
    items = r.json()
    for item, name in zip(items, [n for n in (*seen, *unseen) for _ in UNSEEN_VARIANTS], strict=True):
        assert probabilities(item, [ids[name]])[0] >= 0.5, (name, item)  # the head's tag, or its title's
    titles_only = expected_zero_shot(two_tower.encoder(), unseen, [TITLES[n] for n in unseen])
    got = np.array([probabilities(item, [ids[n] for n in unseen])
                    for item in items[len(seen) * len(UNSEEN_VARIANTS):]])
    assert np.abs(got - titles_only).max() <= 0.006, (got, titles_only)


async def _live_head(db_url: str, dataset: str) -> tuple[int, str]:
    """The dataset's live head version and the model it was fitted on."""
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow("SELECT head_version, model_id FROM dataset WHERE name = $1", dataset)
    finally:
        await conn.close()
    assert row is not None
    return row["head_version"], row["model_id"]


async def _vectors(db_url: str, item_ids: list[int], model_id: str) -> dict[int, np.ndarray]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT item_id, vector FROM embedding WHERE model_id = $1 AND item_id = ANY($2)",
                                model_id, item_ids)
    finally:
        await conn.close()
    return {row["item_id"]: np.frombuffer(row["vector"], dtype=np.float32) for row in rows}


def retrain_all(two_tower: TwoTowerStack) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": two_tower.stack.database_url, "NATS_URL": two_tower.admin_nats_url}
    return subprocess.run([sys.executable, "-m", "gateway.admin", "retrain-all"], env=env, capture_output=True,
                          text=True, timeout=60)


async def test_a_model_swap_re_embeds_kept_copies_and_never_mixes_models(
        two_tower: TwoTowerStack, tt_api: httpx.AsyncClient) -> None:
    names = list(TITLES)
    ids = await make_dataset(tt_api, "swap")
    await report(tt_api, "swap", ids, names)
    r = await tt_api.post("/api/train_dataset/", json={"dataset": "swap"})
    assert r.status_code == 200, r.text
    await wait_trained(tt_api, "swap")
    want = [[ids[name]] for name in names for _ in UNSEEN_VARIANTS]
    r = await tag(tt_api, "swap", names)
    assert r.status_code == 200, r.text
    assert [[t["id"] for t in item["tags"]] for item in r.json()] == want
    old, new = two_tower.model, (MODEL_B if two_tower.model == MODEL_A else MODEL_A)
    old_id, new_id = two_tower.encoder(old).model_id, two_tower.encoder(new).model_id
    assert old_id != new_id
    old_version, model_id = await _live_head(two_tower.db_url, "swap")
    assert model_id == old_id

    # The rollout: the trainer restarts too (here it stays down until retrain-all has queued the refits, so the
    # window before the new head is certain to be seen), the image service comes back on the new model.
    two_tower.stack.stop("trainer")
    two_tower.swap(new)
    # The live head was fitted on the old model's vectors: never applied to the new model's, a 503 that says why.
    r = await tag(tt_api, "swap", names)
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error"] == "head_model_mismatch", body
    assert old_id in body["detail"] and new_id in body["detail"] and "retrain" in body["detail"], body

    done = retrain_all(two_tower)
    assert done.returncode == 0, done.stderr
    assert "queued" in done.stdout, done.stdout
    r = await tt_api.post("/api/dataset_info/", json={"dataset": "swap"})
    assert r.json()["state"] == "waiting", r.text
    r = await tag(tt_api, "swap", ["cat"])  # queued, not yet re-embedded: still a 503, never the old head's tags
    assert r.status_code == 503 and r.json()["error"] == "head_model_mismatch", r.text

    started = time.monotonic()
    two_tower.stack.start("trainer")
    statuses: list[int] = []
    deadline = time.monotonic() + 180
    while True:  # tag calls while the trainer starts, re-embeds and refits: a 503 until the new head is live
        r = await tag(tt_api, "swap", names)
        statuses.append(r.status_code)
        if r.status_code == 200:
            break
        assert r.status_code == 503 and r.json()["error"] == "head_model_mismatch", r.text
        assert time.monotonic() < deadline, f"no head for {new_id} after 180 s: {statuses}"
        await asyncio.sleep(0.2)
    took = time.monotonic() - started
    new_version, model_id = await _live_head(two_tower.db_url, "swap")
    assert model_id == new_id and new_version > old_version  # the answer came from a head of the new model
    assert [[t["id"] for t in item["tags"]] for item in r.json()] == want
    info = await wait_trained(tt_api, "swap")
    assert info["version"] == new_version

    # Every reported item was re-embedded by the new model from its kept copy: the stored vector is what the
    # new export gives that copy (the photos' bytes were uploaded once, before the swap, and never again).
    r = await tt_api.post("/api/list_items/", json={"dataset": "swap", "limit": 100})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == len(names) * len(TRAIN_VARIANTS)
    item_ids = [item["id"] for item in items]
    before, after = (await _vectors(two_tower.db_url, item_ids, old_id),
                     await _vectors(two_tower.db_url, item_ids, new_id))
    assert set(before) == set(after) == set(item_ids)
    enc = two_tower.encoder(new)
    for item in items:
        copy = await tt_api.get(item["image"])
        assert copy.status_code == 200 and copy.headers["content-type"] == "image/jpeg"
        kept = enc.encode([Image.open(io.BytesIO(copy.content))])[0]
        assert float(kept @ after[item["id"]]) > 0.999
        assert float(before[item["id"]] @ after[item["id"]]) < 0.99  # another model's vector, not a copy of it

    # The old model's version cannot be made live again on this model.
    r = await tt_api.post("/api/use_version/", json={"dataset": "swap", "version": old_version})
    assert r.status_code == 400 and r.json()["error"] == "version_model_mismatch", r.text
    print(f"\nswap {old_id} -> {new_id}: the new head answered {took:.1f} s after the trainer was started with "
          f"retrain-all's refits queued ({len(items)} items re-embedded); tag calls meanwhile: {statuses}")
