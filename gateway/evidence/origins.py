"""Log names: the deployment's origin prefix (chosen once, kept in the store) and each log's origin."""

from __future__ import annotations

import secrets

from gateway.audit.log import security_origin, tenant_origin
from gateway.store.base import Store

SECURITY = "security"
"""What the CLI calls the security log where it takes a tenant."""


def origin_prefix(store: Store, configured: str | None = None) -> str:
    """The deployment's origin prefix: the one the store keeps, else `configured` (or a new random one) kept now."""
    default = configured or f"aegress.local/d-{secrets.token_hex(4)}"
    return store.evidence_prefix(default)


def log_origin(store: Store, tenant: str) -> str:
    """The origin of a tenant's log, or of the deployment's security log for `security`."""
    prefix = origin_prefix(store)
    return security_origin(prefix) if tenant == SECURITY else tenant_origin(prefix, tenant)
