"""The NATS users file shipped for deployed servers matches the code's permissions and is a valid config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devtools import servers
from shared import natsauth

REPO = Path(__file__).resolve().parents[3]
USERS = REPO / "deploy" / "nats" / "kashf-users.conf"


def test_the_shipped_users_file_is_what_the_code_renders() -> None:
    rendered = subprocess.run([sys.executable, "-m", "shared.natsauth"], capture_output=True, text=True,
                              check=True, cwd=REPO).stdout
    assert USERS.read_text(encoding="utf-8") == rendered, "run: python -m shared.natsauth > " + str(USERS)


def test_nats_server_accepts_it_with_passwords_from_its_environment(tmp_path: Path) -> None:
    (tmp_path / "kashf-users.conf").write_text(USERS.read_text(encoding="utf-8"), encoding="utf-8")
    main = tmp_path / "nats.conf"
    main.write_text(f'port: 4222\njetstream: {{store_dir: "{tmp_path}/js"}}\ninclude ./kashf-users.conf\n',
                    encoding="utf-8")
    env = {**os.environ, **{natsauth.password_variable(u): f"pw-{u}" for u in natsauth.SERVICES}}
    checked = subprocess.run([servers.nats_server_binary(), "-t", "-c", str(main)], env=env, capture_output=True,
                             text=True, timeout=30, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    missing = {k: v for k, v in env.items() if k != natsauth.password_variable("trainer")}
    refused = subprocess.run([servers.nats_server_binary(), "-t", "-c", str(main)], env=missing,
                             capture_output=True, text=True, timeout=30, check=False)
    assert refused.returncode != 0  # a password the Secret lacks is an error, never an empty password
