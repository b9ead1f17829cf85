"""``python -m shared.db upgrade|downgrade REV|current|revision -m MSG``."""

from __future__ import annotations

import argparse

from alembic import command

from shared.db.migrate import alembic_config
from shared.settings import DatabaseSettings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.db")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("upgrade").add_argument("revision", nargs="?", default="head")
    sub.add_parser("downgrade").add_argument("revision")
    sub.add_parser("current")
    rev = sub.add_parser("revision")
    rev.add_argument("-m", "--message", required=True)
    args = parser.parse_args()
    config = alembic_config(DatabaseSettings().database_url)
    if args.cmd == "upgrade":
        command.upgrade(config, args.revision)
    elif args.cmd == "downgrade":
        command.downgrade(config, args.revision)
    elif args.cmd == "current":
        command.current(config)
    else:
        command.revision(config, message=args.message, autogenerate=True)


if __name__ == "__main__":
    main()
