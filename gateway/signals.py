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
nothing (commands stay fast: bench/cli_start.py); with it, one PUBLISH, and a failure is only logged
at debug level, since the gateways pick the change up by polling anyway.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

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
    if not os.environ.get("AEGRESS_REDIS_URL", "").strip():
        return None
    from gateway.bus import publish_now  # only with Redis configured: imports redis

    try:
        sent = publish_now(store, topic, message)
    except Exception as exc:  # the fleet id read failed, say: the change is committed, polling carries it
        log.debug("announcing %s failed (%s): the gateways see it at their next poll", topic, type(exc).__name__)
        return False
    if not sent:
        log.debug("Redis did not take %s: the gateways see the change at their next poll", topic)
    return sent
