"""The bind stage, pure: the token fixes tenant and actor; headers and query params are claims.

A claim is refused when it is repeated (even with the same value), not strict ASCII, malformed, or
different from the token's binding. Nothing is forwarded for a refused request. Messages never
echo the token's own binding or another tenant's ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.errors import BindingError
from gateway.naming import is_valid_id
from gateway.types import Identity

TENANT_HEADER = "x-aegress-tenant-id"
ACTOR_HEADER = "x-aegress-actor-id"
TENANT_PARAM = "tenantId"
ACTOR_PARAM = "actorId"


@dataclass(frozen=True, slots=True)
class Claims:
    """Raw claimed values as they arrived, every occurrence kept so duplicates can be refused."""

    header_tenant: Sequence[str] = ()
    header_actor: Sequence[str] = ()
    query_tenant: Sequence[str] = ()
    query_actor: Sequence[str] = ()


def _check(label: str, values: Sequence[str], expected: str) -> None:
    if len(values) > 1:
        raise BindingError(
            f"{label} was given more than once.", hint="Send each tenant/actor claim at most once."
        )
    for value in values:
        if not is_valid_id(value):
            raise BindingError(f"{label} is not a valid id.", hint="Ids are ASCII letters, digits, . _ @ -.")
        if value != expected:
            raise BindingError(
                f"{label} does not match the token.",
                hint="Use the tenant and actor the token was issued for, or omit the claim.",
            )


def bind(identity: Identity, claims: Claims) -> Identity:
    """Check every claim against the token's identity; return the identity the request acts as."""
    _check("X-Aegress-Tenant-Id", claims.header_tenant, identity.tenant_id)
    _check("X-Aegress-Actor-Id", claims.header_actor, identity.actor_id)
    _check("tenantId", claims.query_tenant, identity.tenant_id)
    _check("actorId", claims.query_actor, identity.actor_id)
    return identity
