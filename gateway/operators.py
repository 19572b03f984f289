"""Operator credentials: the `aegop_...` tokens that open the read-only console (`/console`).

An operator token is a different kind of credential from an actor token (`aeg_...`): it names no tenant
and no actor, never binds an MCP client (the `/mcp` endpoint only looks in the actor tokens), and an
actor token never opens the console. Like actor tokens it is shown once and stored only as a keyed hash
(HMAC-SHA256 under its own sub-key of the master key, so a hash of one kind never matches the other).
Issuing and revoking one is sealed in the deployment's security log in the same transaction.
"""

from __future__ import annotations

import secrets as _random
import string

from gateway.errors import NotFound
from gateway.secrets import TOKEN_PREFIX, derive_key, mint_id, token_hash
from gateway.store.base import OperatorToken, Store

OPERATOR_PREFIX = "aegop_"
_ALPHABET = string.ascii_letters + string.digits
_BODY = 40
MAX_LABEL = 200


def operator_key(master_key: bytes) -> bytes:
    """The sub-key operator tokens are hashed under (never the actor tokens' `token-hash` key)."""
    return derive_key(master_key, "operator-token-hash")


def mint_operator_token() -> str:
    return OPERATOR_PREFIX + "".join(_random.choice(_ALPHABET) for _ in range(_BODY))


def looks_like_operator_token(value: str) -> bool:
    """Pure: the shape of an operator token (a cheap first check before any hashing or lookup)."""
    body = value[len(OPERATOR_PREFIX):]
    return value.startswith(OPERATOR_PREFIX) and len(body) == _BODY and body.isalnum() and body.isascii()


def looks_like_actor_token(value: str) -> bool:
    """Pure: the shape of an actor token (`aeg_...`), so a refusal can say which kind was given."""
    return value.startswith(TOKEN_PREFIX)


def issue(store: Store, master_key: bytes, now: str, *, label: str = "", by: str | None = None
          ) -> tuple[OperatorToken, str]:
    """Mint an operator token; the store keeps its keyed hash and the security log an
    `operator_change` (`operator_token_issued`, the token id, never the token). The caller shows it once."""
    from gateway.admin import operator_name, sealed_change

    token = mint_operator_token()
    who = by or operator_name()
    info = OperatorToken(id=mint_id("op_"), label=label[:MAX_LABEL], created_at=now, created_by=who)
    with sealed_change(store) as change:
        store.add_operator_token(info, token_hash(operator_key(master_key), token))
        change.seal(None, "operator_change", {"change": "operator_token_issued", "actor": who, "subject": info.id})
    return info, token


def require(store: Store, token_id: str) -> OperatorToken:
    info = store.get_operator_token(token_id)
    if info is None:
        raise NotFound(f"No operator token {token_id!r}.", hint="List them with `aegress operator token list`.")
    return info


def revoke(store: Store, token_id: str, now: str, *, by: str | None = None) -> tuple[OperatorToken, bool]:
    """Revoke an operator token: its console sessions end at their next request. Returns the token and
    whether this call revoked it (False: it was revoked already; nothing changed, nothing sealed)."""
    from gateway.admin import operator_name, sealed_change

    before = require(store, token_id)
    if not before.active:
        return before, False
    with sealed_change(store) as change:
        info = store.revoke_operator_token(token_id, now)
        change.seal(None, "operator_change", {"change": "operator_token_revoked", "actor": by or operator_name(),
                                               "subject": info.id})
    return info, True


def authenticate(store: Store, key: bytes, token: str) -> OperatorToken | None:
    """The active operator token `token` is, or None. `key` is `operator_key(master)`."""
    if not looks_like_operator_token(token):
        return None
    info = store.find_operator_token(token_hash(key, token))
    return info if info is not None and info.active else None
