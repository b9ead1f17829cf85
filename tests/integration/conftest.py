"""The real stack: every service as its own process over a fresh database and a private NATS."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from devtools import servers
from devtools.stack import Stack, create_token
from shared.db.migrate import upgrade

REPO = Path(__file__).resolve().parents[2]


class NatsServer:
    """The stack's nats-server: a chaos test may kill it and start it again on the same port and store."""

    def __init__(self, store_dir: Path, passwords: dict[str, str]) -> None:
        self.store_dir, self.passwords = store_dir, passwords
        self.proc, self.url = servers.start_nats(store_dir, passwords=passwords)
        self.port = int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.proc, _ = servers.start_nats(self.store_dir, self.port, passwords=self.passwords)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def stack_nats(nats_passwords: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    nats = NatsServer(tmp_path_factory.mktemp("stack-nats"), nats_passwords)
    yield nats
    nats.stop()


@pytest.fixture(scope="session")
def nats_passwords() -> dict[str, str]:
    return servers.nats_passwords()


@pytest.fixture(scope="session")
def stack_servers(pg_server: str, stack_nats: NatsServer) -> Iterator[tuple[str, str]]:
    """A database and a nats-server of the stack's own: unit tests in the same session subscribe to the
    same subjects and consume the same streams, and must never meet the stack's services. NATS enforces
    each service's permissions (shared.natsauth), so every flow here also proves they suffice."""
    name = f"kashf_it_{uuid.uuid4().hex[:10]}"
    database_url = asyncio.run(servers.create_database(pg_server, name))
    upgrade(database_url)
    yield database_url, stack_nats.url
    asyncio.run(servers.drop_database(pg_server, name))


@pytest.fixture(scope="session")
def stack(stack_servers: tuple[str, str], nats_passwords: dict[str, str],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    database_url, nats_url = stack_servers
    models = REPO / "models"
    if not (models / "text").exists():
        pytest.fail("models/ is missing: run `make models` (make test does it)")
    log_dir = tmp_path_factory.mktemp("logs")
    stack = Stack(database_url, nats_url, gateway_port=servers.free_port(), log_dir=log_dir,
                  env={"KASHF_MODELS_DIR": str(models), "KASHF_TRAIN_DEBOUNCE_S": "0.5",
                       "FETCH_ALLOW_HOSTS": "127.0.0.1,localhost", "KASHF_ENVIRONMENT": "test"},
                  nats_passwords=nats_passwords)
    stack.start_all()
    try:
        stack.wait_ready(timeout_s=240)
    except Exception:
        stack.stop_all()
        for log in sorted(log_dir.glob("*.log")):
            print(f"==== {log.name}\n{log.read_text(errors='replace')[-4000:]}")
        raise
    yield stack
    stack.stop_all()


@pytest.fixture(scope="session")
def token(stack: Stack) -> str:
    return create_token(stack.database_url, "it-main")


@pytest.fixture(scope="session")
def other_token(stack: Stack) -> str:
    return create_token(stack.database_url, "it-other")


@pytest.fixture
async def api(stack: Stack, token: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url, headers={"Authorization": f"Token {token}"},
                                 timeout=120.0) as client:
        yield client
