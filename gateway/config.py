"""The bounds the gateway enforces, read from the environment at the edge only (the data dir: `gateway.datadir`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.ingress import StaticBinding

DEFAULT_PORT = 8765


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one request may cost; documented in docs/operations.md."""

    max_body_bytes: int = 4 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    request_deadline_s: float = 300.0
    max_sessions: int = 10_000
    session_idle_timeout_s: float = 1800.0  # a replica forgets a session idle this long (it can come back)
    # a session id is valid this long after initialize (it carries its own state: gateway.sessions)
    session_max_age_s: float = 24 * 3600.0
    # without Redis, how often a replica re-checks the sessions it holds against the ended-sessions table
    session_recheck_s: float = 2.0
    # the HTTP edge (docs/operations.md "Limits and failure behaviour")
    header_timeout_s: float = 10.0  # a request's headers must be complete this long after its first byte
    body_idle_timeout_s: float = 30.0  # longest silence while a request body is being received
    body_deadline_s: float = 60.0  # a request body must be complete this long after its headers
    max_header_count: int = 100
    max_connections: int = 1000  # open HTTP connections; beyond it new requests get 503
    max_connections_per_address: int = 100  # open HTTP connections from one client address; then 503
    # an idle keep-alive connection is closed after this long: longer than the idle timeout of the proxy or load
    # balancer in front (60 s for AWS ALB and ingress-nginx), which would otherwise send a request on a connection
    # just as the gateway closes it (a 502 for a POST, which proxies do not retry)
    keep_alive_s: float = 75.0
    # fairness: one actor (or tenant) cannot use up what others need
    max_sessions_per_actor: int = 64
    # when a cap is reached, sessions idle this long with nothing in flight are closed to make room
    session_reclaim_idle_s: float = 60.0
    max_sessions_per_tenant: int = 256  # well below max_connections: one tenant cannot take them all
    max_calls_per_actor: int = 32  # requests in flight
    max_calls_per_tenant: int = 256
    # authentication failures per client address: beyond `auth_failures` in `auth_failure_window_s` -> 429
    auth_failures: int = 60
    auth_failure_window_s: float = 60.0
    drain_grace_s: float = 20.0  # on SIGTERM, how long calls in flight may still run
    # answer every request as one JSON body, never an SSE stream: for hosts that buffer whole responses
    # (AWS Lambda). GET streams are refused (405), messages a call causes before its answer are dropped,
    # and a call that needs a client round trip (sampling, elicitation, roots) is ended with an error.
    json_only: bool = False


@dataclass(frozen=True, slots=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    auth_mode: str = "bearer"
    public_url: str | None = None  # the URL clients use (a tunnel's, a reverse proxy's): see gateway.ingress
    oauth_tenant_paths: bool = False  # OAuth mode: also serve /t/<tenant>/mcp, each its own resource
    limits: Limits = Limits()
    ingress: str = "direct"  # or "tunnel": loopback bind, public URL required (gateway.ingress)
    trusted_proxies: tuple[str, ...] = ()  # whose X-Forwarded-For / X-Forwarded-Host are believed
    static_binding: StaticBinding | None = None  # accept only this one token (gateway.ingress)
    metrics: str = "token"  # /metrics: token (operator token), loopback (no token, loopback peers) or off
    metrics_tenant_label: bool = False  # a tenant label on request metrics and a tenant attribute on spans
