"""The shared vocabulary: plain records passed between the stages and the store.

Everything here is data; no I/O and no behaviour beyond small derived properties.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

JSON = dict[str, Any]
Transport = Literal["stdio", "http"]


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    created_at: str


@dataclass(frozen=True, slots=True)
class Actor:
    tenant_id: str
    id: str
    created_at: str


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as the database knows it: never the token itself, only its keyed hash."""

    id: str
    tenant_id: str
    actor_id: str
    created_at: str
    revoked_at: str | None = None
    label: str = ""

    @property
    def active(self) -> bool:
        return self.revoked_at is None


MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class UpstreamLimits:
    """Bounds on what one upstream may cost the gateway; every upstream is untrusted.

    Defaults are documented in docs/limits.md; `aegress upstream add` / `upstream set` change them
    per upstream. They are kept in the upstream's stored config (only the values that differ).
    """

    max_message_bytes: int = 16 * MIB  # one JSON body, one SSE event, one stdio line, one streamed answer
    connect_timeout_s: float = 30.0  # TCP/TLS connect, or spawning a stdio child
    init_timeout_s: float = 30.0  # initialize (or server/discover) answered
    call_timeout_s: float = 300.0  # one request answered in full
    idle_timeout_s: float = 120.0  # longest silence between bytes of an answer still arriving
    forward_error_data: bool = False  # pass an upstream error's `data` to the client

    def changed(self) -> dict[str, int | float | bool]:
        """The values that differ from the defaults, for storage and display."""
        default = UpstreamLimits()
        return {
            name: getattr(self, name)
            for name in self.__slots__  # type: ignore[attr-defined]
            if getattr(self, name) != getattr(default, name)
        }

    @classmethod
    def from_changed(cls, values: dict[str, object] | None) -> UpstreamLimits:
        known = set(cls.__slots__)  # type: ignore[attr-defined]
        return cls(**{k: v for k, v in (values or {}).items() if k in known})  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """A registered upstream MCP server of one tenant.

    `headers` values are either literal strings or references `keyring:NAME` / `env:NAME` that are
    resolved only when the gateway connects, so the database never holds an upstream secret.
    """

    tenant_id: str
    name: str
    transport: Transport
    command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    prefix: bool = True
    allow_private: bool = False
    created_at: str = ""
    limits: UpstreamLimits = UpstreamLimits()


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling, as fixed by the token (authenticate stage)."""

    tenant_id: str
    actor_id: str
    token_id: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The decide stage's answer for one call."""

    verdict: Literal["allow", "review", "block"]
    rule_id: str = "default"
    reason: str = ""
    policy_version: int = 0


@dataclass(slots=True)
class CallRecord:
    """The queryable copy of a sealed call (written with its evidence record; the evidence is the source)."""

    tenant_id: str
    actor_id: str
    token_id: str
    method: str
    target: str
    upstream: str
    verdict: str
    rule_id: str
    outcome: str
    started_at: str
    duration_ms: float
    error_code: int | None = None
    session_id: str = ""
    client_name: str = ""
