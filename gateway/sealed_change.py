"""Operator changes sealed in the transaction that makes them.

    with sealed_change(store) as change:
        info = store.revoke_token(token_id, now)                 # the change: ordinary store writes
        change.seal(info.tenant_id, "token_revoked", {...})       # its evidence record(s)

Both commit together or not at all (`Store.sealed`): a change whose record cannot be written is rolled
back, and no record claims a change that did not happen. Every operator command that changes stored
state (tenants, actors, tokens, upstreams, policies, pins, review decisions) goes through here.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gateway.audit.canonical import canonicalize
from gateway.audit.log import Entry
from gateway.audit.records import validate_body
from gateway.store.base import Store
from gateway.types import UpstreamSpec


@dataclass
class SealedChange:
    """Collects the records of one change; `Store.sealed` inserts them before COMMIT."""

    store: Store
    prefix: str
    entries: list[Entry]

    def seal(self, tenant: str | None, kind: str, body: dict[str, Any]) -> None:
        """Add a record to the tenant's log (None: the deployment's security log)."""
        from gateway.evidence.events import event_entry

        validate_body(kind, body)
        self.entries.append(event_entry(self.store, tenant, kind, body, prefix=self.prefix))

    def operator_change(self, tenant: str, change: str, subject: str, actor: str, **extra: Any) -> None:
        """An `operator_change` record: `change` (see records.OPERATOR_CHANGES) of `subject` by `actor`."""
        self.seal(tenant, "operator_change", {"change": change, "actor": actor, "subject": subject, **extra})

    def upstream(self, spec: UpstreamSpec, change: str, actor: str) -> None:
        """`upstream_added` / `upstream_changed`, with a digest of the registration (no secret values)."""
        self.operator_change(spec.tenant_id, change, spec.name, actor, config_digest=upstream_digest(spec))


@contextlib.contextmanager
def sealed_change(store: Store) -> Iterator[SealedChange]:
    """Run the block's store writes and the records it seals in one transaction (see module docstring)."""
    from gateway.evidence.origins import origin_prefix

    prefix = origin_prefix(store)
    with store.sealed() as entries:
        yield SealedChange(store, prefix, entries)


def upstream_digest(spec: UpstreamSpec) -> str:
    """sha256 of the upstream's registration with header and env VALUES left out (they may be secrets,
    and an unkeyed digest of a short secret could be guessed from an exported log)."""
    config: dict[str, Any] = {
        "transport": spec.transport,
        "command": list(spec.command),
        "url": spec.url,
        "cwd": spec.cwd,
        "env": sorted(spec.env),
        "headers": sorted(spec.headers),
        "prefix": spec.prefix,
        "allow_private": spec.allow_private,
        "limits": spec.limits.changed(),
    }
    return "sha256:" + hashlib.sha256(canonicalize(config)).hexdigest()


def pins_digest(pins: dict[str, str]) -> str:
    return "sha256:" + hashlib.sha256(canonicalize(dict(sorted(pins.items())))).hexdigest()

