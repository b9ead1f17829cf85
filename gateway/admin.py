"""``kashf-admin``: operator commands for API tokens (never created over the public API): create-token
ACCOUNT (the account too if needed; the token is the last line printed), list-tokens [ACCOUNT], revoke-token
PREFIX_OR_ID (one token). It commits its own session: tokens publish no event and change no dataset view."""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway.repository import Repository, TokenRow
from gateway.service.auth import create_token
from shared.db.engine import make_engine, make_sessionmaker
from shared.settings import GatewaySettings


def _row(token: TokenRow) -> str:
    revoked = token.revoked_at.isoformat(timespec="seconds") if token.revoked_at else "-"
    created = token.created_at.isoformat(timespec="seconds")
    return f"{token.id}\t{token.account}\t{token.prefix}\t{created}\t{revoked}"


async def _run(args: argparse.Namespace, settings: GatewaySettings) -> int:
    engine = make_engine(settings.database_url, pool_size=1)
    try:
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
                print("id\taccount\tprefix\tcreated\trevoked")
                for row in await repo.list_tokens(args.account):
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kashf-admin", description="Kashf API token administration")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("create-token", help="create a token (and the account if needed)").add_argument("account")
    sub.add_parser("list-tokens", help="list tokens").add_argument("account", nargs="?")
    sub.add_parser("revoke-token", help="revoke a token by id or prefix").add_argument("token")
    args = parser.parse_args(argv)
    return asyncio.run(_run(args, GatewaySettings()))


if __name__ == "__main__":
    sys.exit(main())
