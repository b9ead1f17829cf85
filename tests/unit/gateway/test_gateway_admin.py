"""``kashf-admin``: the printed token works against the API; a revoked one stops working; retrain-all rebuilds
every head from Postgres, also when NATS cannot be reached (through the outbox)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

from devtools import servers
from gateway.repository import Repository
from modelkit.heads import load_head
from shared.bus import Bus
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.models import Account, Dataset, Outbox, Tag
from shared.subjects import EVENTS_STREAM, HEADS_BUCKET
from tests.unit.gateway.harness import PEPPER, Gateway, eventually, sql
from tests.unit.trainer.helpers import MODEL_ID, TextModel, seed
from trainer.consumers import TrainerConsumer
from trainer.embedder import BusEmbedder
from trainer.fitting import FitConfig
from trainer.heads import ObjectStoreHeads
from trainer.service import Trainer


async def admin(database_url: str, *args: str, nats_url: str | None = None) -> tuple[int, str, str]:
    env = {**os.environ, "DATABASE_URL": database_url, "KASHF_TOKEN_PEPPER": PEPPER}
    if nats_url is not None:
        env["NATS_URL"] = nats_url
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.admin",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_create_list_and_revoke_tokens(gateway_factory: Callable[..., Any]) -> None:
    async with gateway_factory(token_cache_s=0.5) as gw:
        await _create_list_and_revoke(gw)


async def _create_list_and_revoke(gw: Gateway) -> None:
    url = gw.settings.database_url
    code, out, _ = await admin(url, "create-token", "acme")
    assert code == 0
    token = out.strip().splitlines()[-1]
    assert len(token) >= 40
    ok = await gw.post("/api/list_datasets/", {}, token)
    assert ok.status_code == 200

    stored = await sql(url, "SELECT token_hash, prefix FROM api_token")
    assert token not in {r["token_hash"] for r in stored}  # only a hash is kept
    assert stored[0]["prefix"] == token[:8]

    code, second, _ = await admin(url, "create-token", "acme")  # same account, second token
    assert code == 0
    assert len(await sql(url, "SELECT id FROM account")) == 1

    code, listing, _ = await admin(url, "list-tokens", "acme")
    assert code == 0 and listing.count("\tacme\t") == 2 and token not in listing

    code, out, _ = await admin(url, "revoke-token", token[:8])
    assert code == 0 and "revoked" in out

    async def refused() -> bool:
        return (await gw.post("/api/list_datasets/", {}, token)).status_code == 401

    # Refused once the gateway's token cache (KASHF_TOKEN_CACHE_S, 0.5 s here) lets the entry expire.
    assert await eventually(refused, timeout_s=3.0)
    assert (await gw.post("/api/list_datasets/", {}, second.strip().splitlines()[-1])).status_code == 200

    code, _, err = await admin(url, "revoke-token", "no-such-prefix")
    assert code == 1 and "no token" in err


async def test_admin_uses_a_running_dev_stack_and_explains_a_wrong_database_in_one_line(
    pg_server: str, database_url: str, tmp_path: Any
) -> None:
    async def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.admin", *args, env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    base = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    base["KASHF_TOKEN_PEPPER"] = PEPPER
    state = tmp_path / "state"
    state.mkdir()
    (state / "stack.env").write_text(f"DATABASE_URL={database_url}\n", encoding="utf-8")
    code, _, err = await run({**base, "KASHF_STATE_DIR": str(state)}, "create-token", "from-stack")
    assert code == 0, err
    assert "using the dev stack's database" in err
    assert await sql(database_url, "SELECT id FROM account WHERE name = 'from-stack'")

    empty = await servers.create_database(pg_server, f"kashf_empty_{os.getpid()}")
    try:
        code, _, err = await run({**base, "DATABASE_URL": empty}, "create-token", "x")
        assert code == 2 and "Traceback" not in err
        assert err.strip().count("\n") == 0 and "has no Kashf schema" in err and "shared.db upgrade" in err
    finally:
        await servers.drop_database(pg_server, empty.rsplit("/", 1)[-1])
    missing = empty.rsplit("/", 1)[0] + "/kashf_never_made"
    code, _, err = await run({**base, "DATABASE_URL": missing}, "list-tokens")
    assert code == 2 and "does not exist" in err and "Traceback" not in err


async def test_rows_a_sweep_is_publishing_are_not_counted_as_left_in_the_outbox(clean_db: str) -> None:
    """retrain-all's "still in the outbox" count: a gateway's sweep holds the rows it publishes locked until it
    marks them published; those are not left behind (it said so once while the harness's sweep ran)."""
    engine = make_engine(clean_db, pool_size=2)
    sessions = make_sessionmaker(engine)
    try:
        async with sessions.begin() as s:
            rows = [Outbox(subject="kashf.test", msg_id=f"count-{i}", payload={}) for i in range(3)]
            s.add_all(rows)
        ids = [r.id for r in rows]
        async with sessions() as sweep, sessions() as admin_session:
            held = await Repository(sweep).lock_unpublished(ids[:2], 10)  # the sweep, mid-publish
            assert [r.id for r in held] == ids[:2]
            assert await Repository(admin_session).count_unpublished(ids) == 1
            await sweep.rollback()  # the publish failed: the rows are left, and counted again
            assert await Repository(admin_session).count_unpublished(ids) == 3
    finally:
        await engine.dispose()


async def test_retrain_all_rebuilds_every_head_after_the_object_store_is_lost(gw: Gateway, nats_url: str) -> None:
    url = gw.settings.database_url
    engine = make_engine(url, pool_size=4)
    sessions = make_sessionmaker(engine)
    first, _ = await seed(sessions)
    second, _ = await seed(sessions)
    async with sessions.begin() as s:  # a dataset without reports has nothing to train
        account = Account(name="empty")
        s.add(account)
        await s.flush()
        s.add(Dataset(account_id=account.id, name="nothing", title="nothing", kind="text"))
        titles = Dataset(account_id=account.id, name="titles", title="titles", kind="text")
        s.add(titles)
        await s.flush()
        s.add_all([Tag(dataset_id=titles.id, title="sport"), Tag(dataset_id=titles.id, title="food")])
        zero_shot = titles.id

    bus = await Bus.connect(nats_url, "test-retrain-all")
    await bus.js.purge_stream(EVENTS_STREAM)
    await TextModel().serve(bus)
    trainer = Trainer(sessions, BusEmbedder(bus), ObjectStoreHeads(bus.js), config=FitConfig(cv_folds=3))
    consumer = TrainerConsumer(bus, trainer, debounce_s=0.1, max_deliver=5, ack_wait_s=5.0,
                               durable=f"trainer-admin-{os.getpid()}")
    await consumer.start()

    async def heads_at(version: int, *, also: tuple[int, ...] = ()) -> bool:
        rows = await sql(url, "SELECT state, head_version FROM dataset WHERE id = ANY($1::bigint[])",
                         [first, second, *also])
        return all((r["state"], r["head_version"]) == ("trained", version) for r in rows)

    try:
        code, out, err = await admin(url, "retrain-all", nats_url=nats_url)
        assert code == 0, err
        assert "queued 2 datasets" in out and "outbox" not in err
        assert await eventually(lambda: heads_at(1), timeout_s=30)
        # A dataset tagged from its tag titles alone has a head but no report: retrain-all rebuilds it too.
        assert (await trainer.refit(zero_shot)).version == 1

        await bus.js.delete_object_store(HEADS_BUCKET)  # every head blob is gone; Postgres still has it all
        code, out, err = await admin(url, "retrain-all", nats_url=nats_url)
        assert code == 0 and "queued 3 datasets" in out, err
        assert await eventually(lambda: heads_at(2, also=(zero_shot,)), timeout_s=30)
        for dataset_id in (first, second, zero_shot):
            assert (await load_head(bus.js, dataset_id, 2)).model_id == MODEL_ID

        # NATS unreachable from where the operator runs it: the requests wait in the outbox, durable, and
        # the running gateway's sweep publishes them.
        code, out, err = await admin(url, "retrain-all", nats_url=f"nats://127.0.0.1:{servers.free_port()}")
        assert code == 0 and "queued 3 datasets" in out and "3 requests are still in the outbox" in err
        assert await eventually(lambda: heads_at(3, also=(zero_shot,)), timeout_s=30)
        unpublished = await sql(url, "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")
        assert unpublished[0]["n"] == 0
    finally:
        await consumer.stop(5)
        await bus.close(5)
        await engine.dispose()
