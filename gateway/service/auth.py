"""API tokens: random, shown once, stored only as a peppered HMAC."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from gateway.repository import Repository
from gateway.state import AppState
from shared.errors import Unauthorized

PREFIX_CHARS = 8


def hash_token(token: str, pepper: str) -> str:
    return hmac.new(pepper.encode("utf-8"), token.encode("utf-8"), hashlib.sha256).hexdigest()


def parse_authorization(header: str | None) -> str:
    """The key of ``Authorization: Token KEY``; Unauthorized when absent or malformed."""
    if not header:
        raise Unauthorized("missing Authorization header; send 'Authorization: Token <key>'")
    scheme, _, key = header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "token" or not key:
        raise Unauthorized("malformed Authorization header; send 'Authorization: Token <key>'")
    return key


async def authenticate(state: AppState, header: str | None, address: str) -> int:
    """The account id the header's token belongs to; Unauthorized for unknown or revoked tokens.

    A token in the replica's caches costs no database session at all."""
    token_hash = hash_token(parse_authorization(header), state.settings.token_pepper.get_secret_value())
    account_id = state.tokens.get(token_hash)
    if account_id is not None:
        return account_id
    if state.tokens.known_unknown(token_hash):
        raise Unauthorized("invalid or revoked token")
    if not state.tokens.was_found(token_hash):
        # Possibly a guess: its lookup is charged to the client's address, so guesses cost bounded database work.
        state.addresses.check(address)

    async def lookup() -> int | None:
        return await state.transact(lambda uow: uow.repo.account_for_token_hash(token_hash))

    account_id = await state.tokens.get_or_load(token_hash, lookup)
    if account_id is None:
        raise Unauthorized("invalid or revoked token")
    return account_id


def new_token() -> str:
    """43 URL-safe characters; never starting with '-', so its prefix can be passed to ``kashf-admin
    revoke-token`` as it is (argparse would take it for an option)."""
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


async def create_token(repo: Repository, account: str, pepper: str) -> tuple[int, str]:
    """Create the account if needed and a new token for it; returns (token id, token)."""
    account_id = await repo.get_or_create_account(account)
    token = new_token()
    token_id = await repo.add_token(account_id, hash_token(token, pepper), token[:PREFIX_CHARS])
    return token_id, token
