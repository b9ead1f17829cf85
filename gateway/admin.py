"""``kashf-admin``: operator commands. API tokens (never created over the public API): create-token ACCOUNT
(the token is the last line printed), list-tokens [ACCOUNT], revoke-token PREFIX_OR_ID. retrain-all: rebuild
every dataset's head from Postgres (e.g. after losing the object store)."""
# With no DATABASE_URL it reads the file a running `make up` writes (.kashf/stack.env), so it talks to
# that stack's database; environment variables always win over the file.

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.infra.outbox import OutboxEvent, OutboxPublisher
from gateway.repository import Repository, TokenRow
from gateway.service.auth import create_token
from shared.bus import Bus, connect
from shared.db.engine import make_engine, make_sessionmaker
from shared.errors import Unavailable
from shared.schemas.events import TrainRequest
from shared.settings import GatewaySettings
from shared.subjects import train_subject


def _row(token: TokenRow) -> str:
    revoked = token.revoked_at.isoformat(timespec="seconds") if token.revoked_at else "-"
    created = token.created_at.isoformat(timespec="seconds")
    return f"{token.id}\t{token.account}\t{token.prefix}\t{created}\t{revoked}"


async def retrain_all(sessions: async_sessionmaker[AsyncSession], settings: GatewaySettings) -> int:
    """Mark every dataset with reports or a head waiting and queue a forced TrainRequest for it through the outbox
    (durable: a running gateway publishes what this cannot); then publish them now if NATS answers."""
    async with sessions() as session:
        repo = Repository(session)
        dataset_ids = await repo.datasets_to_retrain()
        run = uuid.uuid4().hex[:12]
        events = [OutboxEvent(train_subject(d), f"train-{d}", TrainRequest(dataset_id=d, reason="retrain",
                                                                          request_id=f"retrain-all-{run}"))
                  for d in dataset_ids]
        outbox_ids = await repo.next_outbox_ids(len(events)) if events else []
        for dataset_id in dataset_ids:
            await repo.mark_waiting(dataset_id)
        await repo.add_outbox([event.row(oid) for oid, event in zip(outbox_ids, events, strict=True)])
        await session.commit()
    print(f"queued {len(dataset_ids)} datasets for retraining")
    published = await _publish(sessions, settings, outbox_ids)
    left = 0
    if published < 0:  # NATS did not answer here: every request waits in the outbox
        left = len(outbox_ids)
    elif published < len(outbox_ids):
        # NATS answered: rows this publisher skipped a running gateway's sweep held, and may have published.
        async with sessions() as session:
            left = await Repository(session).count_unpublished(outbox_ids)
    if left:
        print(f"{left} requests are still in the outbox: a running gateway publishes "
              f"them (every KASHF_OUTBOX_SWEEP_S)", file=sys.stderr)
    return 0


async def _publish(sessions: async_sessionmaker[AsyncSession], settings: GatewaySettings, ids: list[int]) -> int:
    """How many of ``ids`` this command published; -1 when NATS did not answer."""
    if not ids:
        return 0
    try:
        bus = Bus(await connect(settings.nats_url, "kashf-admin", connect_timeout=2.0))
    except Unavailable:
        return -1  # NATS unreachable from here
    try:
        publisher = OutboxPublisher(sessions, bus, sweep_s=settings.outbox_sweep_s)
        published = 0
        for start in range(0, len(ids), 200):
            published += await publisher.publish(ids[start:start + 200])
        return published
    finally:
        await bus.close(2.0)


async def _run(args: argparse.Namespace, settings: GatewaySettings) -> int:
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        if args.cmd == "retrain-all":
            return await retrain_all(make_sessionmaker(engine), settings)
        async with make_sessionmaker(engine)() as session:
            repo = Repository(session)
            if args.cmd == "create-token":
                token_id, token = await create_token(
                    repo, args.account, settings.token_pepper.get_secret_value()
                )
                await session.commit()
                print(f"created token {token_id} for account '{args.account}'; it is shown only once:")
                print(token)
                return 0
            if args.cmd == "list-tokens":
                rows = await repo.list_tokens(args.account)
                print("id\taccount\tprefix\tcreated\trevoked")
                for row in rows:
                    print(_row(row))
                return 0
            matches = await repo.find_tokens(args.token)
            if not matches:
                print(f"no token matches '{args.token}'", file=sys.stderr)
                return 1
            if len(matches) > 1:
                print(f"'{args.token}' matches {len(matches)} tokens; give the id", file=sys.stderr)
                return 2
            await repo.revoke_token(matches[0].id)
            await session.commit()
            print(f"revoked token {matches[0].id} of account '{matches[0].account}'")
            return 0
    finally:
        await engine.dispose()


STACK_ENV = "stack.env"  # written by `make up` into its state folder (KASHF_STATE_DIR, default .kashf)


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"database '{parts.path.lstrip('/')}' at {parts.hostname}:{parts.port or 5432}"


def _one_line_failure(exc: BaseException, url: str) -> str | None:
    """What an operator needs to read when the database is not there or not Kashf's; None: unexpected."""
    # SQLAlchemy wraps the driver's error in its DBAPI adapter's, which wraps asyncpg's own.
    cause = (exc.orig if isinstance(exc, DBAPIError) else None) or exc
    root = cause.__cause__ or cause
    where = _where(url)
    if isinstance(root, asyncpg.UndefinedTableError):
        return f"{where} has no Kashf schema: run `python -m shared.db upgrade` with this DATABASE_URL"
    if isinstance(root, asyncpg.InvalidCatalogNameError):
        return f"{where} does not exist: set DATABASE_URL, or start the stack with `make up`"
    if isinstance(root, OSError | TimeoutError | asyncpg.CannotConnectNowError):
        return f"cannot reach {where} ({root}): is Postgres running? (`make up` starts one)"
    if isinstance(root, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return f"{where} refused the login: check the user and password in DATABASE_URL"
    return None


def load_settings() -> GatewaySettings:
    """Settings from the environment, then from a running dev stack's state file when there is one."""
    env_file = Path(os.environ.get("KASHF_STATE_DIR", ".kashf")) / STACK_ENV
    if env_file.is_file() and "DATABASE_URL" not in os.environ:
        print(f"using the dev stack's database (from {env_file})", file=sys.stderr)
    return GatewaySettings(_env_file=env_file if env_file.is_file() else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kashf-admin", description="Kashf administration: API tokens, retraining")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("create-token", help="create a token (and the account if needed)").add_argument("account")
    sub.add_parser("list-tokens", help="list tokens").add_argument("account", nargs="?")
    sub.add_parser("revoke-token", help="revoke a token by id or prefix").add_argument("token")
    sub.add_parser("retrain-all", help="queue a refit of every dataset with reports or a head (rebuilds lost heads)")
    args = parser.parse_args(argv)
    settings = load_settings()
    try:
        return asyncio.run(_run(args, settings))
    except (DBAPIError, OSError, TimeoutError) as exc:
        message = _one_line_failure(exc, settings.database_url)
        if message is None:
            raise
        print(f"kashf-admin: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
