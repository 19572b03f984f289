"""`aegress serve --demo`: tenant `demo`, actor `demo-user`, the bundled demo upstream and its policy, made
once and kept. Here, above both `gateway.admin` and `gateway.policy_admin`, which it uses: the demo is the one
caller of both that neither needs."""

from __future__ import annotations

import sys

from gateway import signals
from gateway.admin import add_actor, create_tenant, issue_token, sealed_change
from gateway.policy import demo_policy_text
from gateway.policy_admin import apply_policy
from gateway.store.base import Store
from gateway.types import UpstreamSpec

DEMO_TENANT = "demo"
DEMO_ACTOR = "demo-user"
DEMO_UPSTREAM = "demo"


def demo_upstream_spec(now: str) -> UpstreamSpec:
    return UpstreamSpec(DEMO_TENANT, DEMO_UPSTREAM, "stdio", command=(sys.executable, "-m", "gateway.demo"),
                        prefix=True, created_at=now)


def ensure_demo(store: Store, master_key: bytes, now: str, have_token: bool) -> str | None:
    """Create tenant demo, actor demo-user and the demo upstream if missing (idempotent).

    Returns a newly issued token when the operator has none stored for demo-user, else None.
    """
    by = "aegress serve --demo"
    if store.get_tenant(DEMO_TENANT) is None:
        create_tenant(store, DEMO_TENANT, now, by)
    if store.get_actor(DEMO_TENANT, DEMO_ACTOR) is None:
        add_actor(store, DEMO_TENANT, DEMO_ACTOR, now, by)
    current = store.get_upstream(DEMO_TENANT, DEMO_UPSTREAM)
    wanted = demo_upstream_spec(now)
    if current is None or current.command != wanted.command:
        with sealed_change(store) as change:
            if current is not None:
                store.remove_upstream(DEMO_TENANT, DEMO_UPSTREAM)
            store.add_upstream(wanted)
            store.set_upstream_tools(
                DEMO_TENANT, DEMO_UPSTREAM,
                ["echo", "add", "get_time", "write_note", "delete_note", "shell_preview", "count_slowly"],
            )
            change.upstream(wanted, "upstream_added" if current is None else "upstream_changed", by)
        signals.announce(store, signals.UPSTREAMS_CHANGED, signals.tenant_changed(DEMO_TENANT))
    if store.get_policy_version(DEMO_TENANT) is None:  # the demo policy: allow, review and block on `demo`
        apply_policy(store, DEMO_TENANT, demo_policy_text(), "demo.toml", now, by)
    active = [t for t in store.list_tokens(DEMO_TENANT, DEMO_ACTOR) if t.active]
    if have_token and active:
        return None
    _, token = issue_token(store, master_key, DEMO_TENANT, DEMO_ACTOR, now, label="demo", by=by)
    return token
