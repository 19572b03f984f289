"""Client-config library: render, merge and remove an aegress entry in each coding agent's config.

Everything here is pure (text in, text out) except `write`, the one module that touches files.
`diff` renders a `--dry-run` preview. See docs/clients.md.
"""

from gateway.clients.diff import unified_diff
from gateway.clients.headers import gateway_headers
from gateway.clients.model import (
    ACTOR_ENV,
    ACTOR_HEADER,
    DEFAULT_NAME,
    TENANT_ENV,
    TENANT_HEADER,
    TOKEN_ENV,
    ClientSpec,
    Entry,
    EntryRequest,
    Host,
    MalformedConfig,
    Scope,
)
from gateway.clients.registry import CLIENTS

__all__ = [
    "ACTOR_ENV",
    "ACTOR_HEADER",
    "CLIENTS",
    "DEFAULT_NAME",
    "TENANT_ENV",
    "TENANT_HEADER",
    "TOKEN_ENV",
    "ClientSpec",
    "Entry",
    "EntryRequest",
    "Host",
    "MalformedConfig",
    "Scope",
    "gateway_headers",
    "unified_diff",
]
