"""The client's fixtures: the CLI's environment, and a second gateway on the same stack with a tiny rate
(burst 4, 4 requests a second) and list limit (8 items), to meet real 429s and 413s."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import servers
from devtools.stack import Stack
from tests.integration.client.helpers import TIGHT_BURST, TIGHT_MAX_ITEMS, TIGHT_RATE_PER_MINUTE


@pytest.fixture(scope="session")
def tight_gateway(stack: Stack, nats_passwords: dict[str, str],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {**stack.env, "KASHF_RATE_PER_MINUTE": str(TIGHT_RATE_PER_MINUTE),
           "KASHF_RATE_BURST": str(TIGHT_BURST), "KASHF_MAX_ITEMS": str(TIGHT_MAX_ITEMS)}
    gateway = Stack(stack.database_url, stack.nats_url, gateway_port=servers.free_port(), services=("gateway",),
                    env=env, log_dir=tmp_path_factory.mktemp("tight-gateway"), nats_passwords=nats_passwords)
    gateway.start_all()
    try:
        gateway.wait_ready(timeout_s=120)
        yield gateway
    finally:
        gateway.stop_all()


@pytest.fixture
def cli_env(stack: Stack, token: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "KASHF_URL": stack.url, "KASHF_TOKEN": token, "KASHF_CACHE_DIR": str(tmp_path / "cache"),
            "COLUMNS": "200", "NO_COLOR": "1"}
