"""``kashf-admin``: the printed token works against the API; a revoked one stops working."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

from tests.unit.gateway.harness import PEPPER, Gateway, eventually, sql


async def admin(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "DATABASE_URL": database_url, "KASHF_TOKEN_PEPPER": PEPPER}
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
    from devtools import servers

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
