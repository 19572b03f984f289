"""What an operator's change tells the gateways: the named topics, their messages, and `announce`.

Every message is a hint to look sooner, never the change itself: the database stays the source of
truth, so a gateway that hears `token.revoked` checks the store before it ends anything, and one that
hears nothing (Redis down, a message lost) sees the same change at its next poll.

    topic               message                        a gateway that hears it
    ──────────────────  ─────────────────────────────  ────────────────────────────────────────────────
    token.revoked       {tenant, token_id}             re-checks the matching tokens of its open sessions,
                        {tenant, actor}  (actor gone)  streams and held calls against the store now and
                        {tenant}         (tenant gone) ends those no longer active
    policy.changed      {tenant}                       reloads policies and pins now
    upstreams.changed   {tenant}                       reloads upstream registrations now
    review.decided      {tenant, held_id}              wakes the call held as `held_id` now

The library's operator functions (gateway.admin, gateway.policy_admin, gateway.review) call
`announce` after their transaction committed. Without `AEGRESS_REDIS_URL` it does nothing and imports
nothing (commands stay fast: bench/cli_start.py); with it, one PUBLISH on a plain socket (the Redis
client library only for TLS and unix-socket URLs), and a failure is only logged at debug level, since
the gateways pick the change up by polling anyway.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from gateway.store.base import Store

log = logging.getLogger("aegress.signals")

TOKEN_REVOKED = "token.revoked"
POLICY_CHANGED = "policy.changed"
UPSTREAMS_CHANGED = "upstreams.changed"
REVIEW_DECIDED = "review.decided"
TOPICS = (TOKEN_REVOKED, POLICY_CHANGED, UPSTREAMS_CHANGED, REVIEW_DECIDED)

Message = dict[str, str]


def token_revoked(tenant: str, *, token_id: str = "", actor: str = "") -> Message:
    """One token revoked; or every token of an actor (actor removed) or of a tenant (tenant deleted)."""
    message = {"tenant": tenant}
    if token_id:
        message["token_id"] = token_id
    if actor:
        message["actor"] = actor
    return message


def tenant_changed(tenant: str) -> Message:
    """policy.changed and upstreams.changed: which tenant's state to reload."""
    return {"tenant": tenant}


def review_decided(tenant: str, held_id: str) -> Message:
    return {"tenant": tenant, "held_id": held_id}


def token_matches(message: Message, tenant: str, actor: str, token_id: str) -> bool:
    """Pure: does a token.revoked message concern this identity? (An empty message concerns every token.)"""
    if message.get("tenant") and message["tenant"] != tenant:
        return False
    if message.get("actor") and message["actor"] != actor:
        return False
    return not (message.get("token_id") and message["token_id"] != token_id)


def announce(store: Store, topic: str, message: Message) -> bool | None:
    """Tell every gateway of this database's fleet now. None without Redis (nothing to do), False when
    Redis did not take it (the gateways see the change at their next poll), True when sent."""
    url = os.environ.get("AEGRESS_REDIS_URL", "").strip()
    if not url:
        return None
    try:
        if urlsplit(url).scheme == "redis":
            sent = _publish_plain(url, _channel(store, topic), _envelope(message), PUBLISH_TIMEOUT_S)
        else:  # TLS, unix sockets: the client library knows them
            from gateway.bus import publish_now

            sent = bool(publish_now(store, topic, message, url=url, timeout_s=PUBLISH_TIMEOUT_S))
    except Exception as exc:  # Redis down or refusing, or the fleet id read failed: the change is committed
        log.debug("announcing %s failed (%s): the gateways see it at their next poll", topic, type(exc).__name__)
        return False
    if not sent:
        log.debug("Redis did not take %s: the gateways see the change at their next poll", topic)
    return sent


PUBLISH_TIMEOUT_S = 0.5


def _channel(store: Store, topic: str) -> str:
    """`gateway.bus.channel(gateway.bus.fleet_id(store), topic)`, without importing the bus (asyncio)."""
    return f"aegress:{store.shared_value('fleet_id', secrets.token_hex(8))}:{topic}"


def _envelope(message: Message) -> bytes:
    """What `Bus.publish` sends: the sender and the message."""
    return json.dumps({"from": "cli", "m": message}, separators=(",", ":")).encode()


def _publish_plain(url: str, channel: str, data: bytes, timeout_s: float) -> bool:
    """PUBLISH on one plain TCP connection (a `redis://` URL): a command must not wait for a Redis client
    library to import (100 ms and more) before the gateways hear of its change."""
    parts = urlsplit(url)
    commands: list[list[bytes]] = []
    if parts.password is not None:
        user = [unquote(parts.username).encode()] if parts.username else []
        commands.append([b"AUTH", *user, unquote(parts.password).encode()])
    commands.append([b"PUBLISH", channel.encode(), data])
    wire = b"".join(b"*%d\r\n" % len(c) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in c) for c in commands)
    with socket.create_connection((parts.hostname or "localhost", parts.port or 6379), timeout=timeout_s) as sock:
        sock.sendall(wire)
        replies = b""
        while replies.count(b"\r\n") < len(commands) and len(replies) < 65536:  # one line per reply
            chunk = sock.recv(4096)
            if not chunk:
                return False
            replies += chunk
    return not any(line.startswith(b"-") for line in replies.split(b"\r\n"))
