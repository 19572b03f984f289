"""How requests reach the gateway: directly, or through an outbound tunnel beside it (issue 12).

`aegress serve --ingress tunnel` is for customers who cannot expose an inbound MCP endpoint: the gateway
binds loopback only and a tunnel client next to it (OpenAI's `tunnel-client`, Anthropic's organisation
tunnels, cloudflared, ngrok, `ssh -R`) carries the traffic. What that changes, and why:

- Every connection arrives from the tunnel's loopback address, so a loopback peer proves nothing:
  authentication stays on for every request (there is no unauthenticated mode at all), and the
  per-address connection cap would count the whole internet as one client (serve raises it).
- The URL clients use is the tunnel's, not the bind address: an explicit public URL is the one every
  URL the gateway prints is built from, and its host is accepted by the Host and Origin checks.
- Forwarded headers (`X-Forwarded-For`, `X-Forwarded-Host`) are believed only from the proxy addresses
  the operator names (`--trusted-proxy`); from anyone else they are ignored.

Static binding (`MCP_AUTH_MODE=bearer` with `AEGRESS_STATIC_TENANT` / `AEGRESS_STATIC_ACTOR`): for a
customer-hosted pilot the gateway accepts exactly one issued Aegress token, read at start-up from a secret
store reference (`keyring:NAME` or `file:/path`, never the token itself on a command line), and refuses
to start when that token is missing, unknown, revoked or bound to another tenant or actor.

Everything here but `read_secret_ref` and `pin_static_token` is pure.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.store.base import Store

INGRESS_MODES = ("direct", "tunnel")
AUTH_MODES = ("bearer", "oauth")
"""`MCP_AUTH_MODE` values operators expect; `oauth` is named so that asking for it gets a clear answer."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_loopback_host(host: str) -> bool:
    """Pure: `localhost`, or an address in 127.0.0.0/8 or ::1 (brackets allowed)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_auth_mode(mode: str) -> str:
    """The supported `MCP_AUTH_MODE`, or a ConfigError saying what is."""
    mode = mode.strip().lower()
    if mode == "bearer":
        return mode
    if mode == "oauth":
        return mode
    raise ConfigError(f"MCP_AUTH_MODE={mode[:40]!r} is not a known mode.",
                      hint=f"Use one of: {', '.join(AUTH_MODES)}.", code="auth-mode")


# -- the public URL --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PublicUrl:
    """The URL clients reach the gateway's /mcp by, and what follows from it."""

    url: str  # as given, without a trailing slash
    scheme: str
    host: str  # the name as it appears in a Host header (IPv6 in brackets)
    port: int | None  # None: the scheme's default port

    @property
    def base(self) -> str:
        """The URL without its final `/mcp`: where `/health` is."""
        return self.url[: -len("/mcp")]

    @property
    def health(self) -> str:
        return self.base + "/health"

    @property
    def host_values(self) -> tuple[str, ...]:
        """Host header values that name this URL: `name:port`, and the bare name for a default port."""
        default = 443 if self.scheme == "https" else 80
        port = self.port or default
        values = [f"{self.host}:{port}"]
        if port == default:
            values.insert(0, self.host)
        return tuple(values)

    @property
    def origin(self) -> str:
        """The browser Origin of a page served from this URL's host."""
        return f"{self.scheme}://{self.host}" + (f":{self.port}" if self.port is not None else "")


def with_mcp_path(url: str) -> str:
    """Pure: an origin alone (`https://gw.example.com`) means its `/mcp`; any other URL is left as given."""
    parts = urlsplit(url.strip())
    return url.strip().rstrip("/") + "/mcp" if parts.scheme and parts.path in ("", "/") else url


def parse_public_url(url: str) -> PublicUrl:
    """Pure: check and split a public URL. https, or http to a loopback name (local tests, `ssh -R` on one
    host); no credentials, query or fragment; the path ends with `/mcp` (a tunnel forwards paths as they
    are, so the gateway's `/mcp` is what the public path must reach)."""
    url = url.strip().rstrip("/")
    hint = "Give the URL clients use, for example --public-url https://mcp.example.com/mcp."
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"The public URL {url[:200]!r} is not a valid URL.", hint=hint, code="public-url") from None
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"The public URL {url[:200]!r} must be an http(s) URL with a host name.", hint=hint,
                          code="public-url")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ConfigError("The public URL must not carry credentials, a query or a fragment.", hint=hint,
                          code="public-url")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ConfigError(f"The public URL {url[:200]!r} is plain http to a host that is not loopback: bearer "
                          "tokens would cross the network unencrypted.",
                          hint="Use the tunnel's https URL (every provider profile in docs/operations/tunnel.md "
                               "gives one).", code="public-url")
    if not parts.path.endswith("/mcp"):
        raise ConfigError(f"The public URL {url[:200]!r} must end with /mcp, the gateway's endpoint.", hint=hint,
                          code="public-url")
    shown = f"[{host}]" if ":" in host else host.lower()
    return PublicUrl(url, parts.scheme, shown, port)


# -- ingress settings ------------------------------------------------------------------------------
def check_ingress(mode: str, bind_host: str, public_url: str | None, allow_public_bind: bool) -> PublicUrl | None:
    """Pure: the ingress mode's rules for `serve`; returns the parsed public URL (None when not given)."""
    if mode not in INGRESS_MODES:
        raise ConfigError(f"Unknown ingress mode {mode[:40]!r}.", hint=f"Use one of: {', '.join(INGRESS_MODES)}.",
                          code="ingress-mode")
    public = parse_public_url(public_url) if public_url else None
    if mode == "tunnel":
        if not is_loopback_host(bind_host) or allow_public_bind:
            raise ConfigError("Tunnel ingress binds loopback only: the tunnel client beside the gateway is its only "
                              "way in.", hint="Drop --host/--allow-public-bind (the default 127.0.0.1 is right).",
                              code="ingress-bind")
        if public is None:
            raise ConfigError("Tunnel ingress needs the public URL clients use.",
                              hint="Pass --public-url https://<the tunnel's public name>/mcp (or set MCP_PUBLIC_URL).",
                              code="public-url")
    return public


def parse_trusted_proxies(values: Iterable[str]) -> tuple[Network, ...]:
    """Pure: addresses or CIDR ranges (`127.0.0.1`, `10.0.0.0/8`, `::1`), separated by spaces or commas."""
    out: list[Network] = []
    for value in values:
        for item in value.replace(",", " ").split():
            try:
                out.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                raise ConfigError(f"{item[:60]!r} is not an IP address or CIDR range.",
                                  hint="Name the proxy or tunnel client's own address, e.g. --trusted-proxy "
                                       "127.0.0.1.", code="trusted-proxy") from None
    return tuple(out)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # [v6]:port
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def trusted(peer: str, proxies: Sequence[Network]) -> bool:
    """Pure: is the socket peer one of the configured proxies?"""
    if not proxies:
        return False
    address = _address(peer)
    return address is not None and any(address in net for net in proxies)


def client_address(peer: str, forwarded_for: Sequence[str], proxies: Sequence[Network]) -> str:
    """Pure: the address the per-address limits count. The socket peer, unless it is a trusted proxy that
    passed `X-Forwarded-For`: then the right-most address in it that is not itself a trusted proxy (what
    a client writes further left is its own claim). Anything unreadable leaves the peer."""
    if not forwarded_for or not trusted(peer, proxies):
        return peer
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return peer
        if not any(address in net for net in proxies):
            return str(address)
    return peer


def edge_host(peer: str, host: str | None, forwarded_host: Sequence[str], proxies: Sequence[Network]) -> str | None:
    """Pure: the Host the Host check looks at: `X-Forwarded-Host` as the nearest trusted proxy set it (the
    last value), or the request's own Host."""
    if forwarded_host and trusted(peer, proxies):
        last = forwarded_host[-1].split(",")[-1].strip()
        if last:
            return last
    return host


# -- static binding ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StaticBinding:
    """One gateway token for one tenant and one actor; `token_ref` says where the token is kept."""

    tenant: str
    actor: str
    token_ref: str


def static_binding(tenant: str | None, actor: str | None, token_ref: str | None) -> StaticBinding | None:
    """Pure: the configured binding, or None when none of its parts is set. The token reference defaults
    to where `aegress token issue` keeps the actor's token (`keyring:token:TENANT:ACTOR`)."""
    if not (tenant or actor or token_ref):
        return None
    if not tenant or not actor:
        missing = [name for name, value in (("AEGRESS_STATIC_TENANT", tenant), ("AEGRESS_STATIC_ACTOR", actor))
                   if not value]
        raise ConfigError(f"A static binding needs a tenant and an actor; {' and '.join(missing)} not set.",
                          hint="Set both (or --static-tenant/--static-actor), or neither for plain bearer tokens.",
                          code="static-binding")
    ref = token_ref or f"keyring:token:{tenant}:{actor}"
    parse_secret_ref(ref)
    return StaticBinding(tenant, actor, ref)


def parse_secret_ref(ref: str) -> tuple[str, str]:
    """Pure: `keyring:NAME` (the OS keyring, or the data dir's 0600 credentials file where there is none)
    or `file:/absolute/path` (a 0600 file holding only the token)."""
    kind, _, value = ref.partition(":")
    if kind == "keyring" and value:
        return kind, value
    if kind == "file" and value.startswith("/"):
        return kind, value
    raise ConfigError("The token reference is neither keyring:NAME nor file:/absolute/path (it is not shown: it "
                      "may be a token).", hint="Point at where the token is kept; never pass the token itself.",
                      code="secret-ref")


def read_secret_ref(ref: str) -> str:
    """The secret a reference points at; ConfigError `static-token-missing` when there is none."""
    kind, value = parse_secret_ref(ref)
    if kind == "keyring":
        from gateway import credentials

        secret = credentials.get_secret(value)
        if not secret:
            raise ConfigError(f"No secret is kept under {ref}.",
                              hint="Issue the token with `aegress token issue --tenant T --actor A` (it is kept "
                                   "under keyring:token:T:A), or point the reference at where it is.",
                              code="static-token-missing")
        return secret.strip()
    from gateway.secrets import check_private_file

    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"No file at {path} for {ref}.", hint="Write the token there (mode 0600), or fix the path.",
                          code="static-token-missing")
    check_private_file(path)
    secret = path.read_text(errors="replace").strip()
    if not secret:
        raise ConfigError(f"{path} is empty.", hint="Write the token there (mode 0600).", code="static-token-missing")
    return secret


def pin_static_token(binding: StaticBinding, store: Store, digest_of: Callable[[str], str]) -> str:
    """Start-up check of a static binding: the referenced token must be an active token of this store, issued
    for exactly the configured tenant and actor. Returns its keyed digest, the only one the gateway then
    accepts (fail closed: every problem is a ConfigError that stops start-up)."""
    token = read_secret_ref(binding.token_ref)
    info = store.find_token(digest_of(token))
    if info is None:
        raise ConfigError(f"The token under {binding.token_ref} is not one this gateway issued.",
                          hint="Issue one with `aegress token issue --tenant T --actor A` against this data dir "
                               "(or database) and keep it there.", code="static-token-unknown")
    if not info.active:
        raise ConfigError(f"The token under {binding.token_ref} ({info.id}) is revoked.",
                          hint="Issue a new one with `aegress token issue` and keep it under that reference.",
                          code="static-token-revoked")
    if (info.tenant_id, info.actor_id) != (binding.tenant, binding.actor):
        raise ConfigError(f"The token under {binding.token_ref} ({info.id}) is bound to tenant {info.tenant_id!r}, "
                          f"actor {info.actor_id!r}, not the configured tenant {binding.tenant!r}, actor "
                          f"{binding.actor!r}.", hint="Fix AEGRESS_STATIC_TENANT / AEGRESS_STATIC_ACTOR, or keep "
                          "that actor's token under the reference.", code="static-token-mismatch")
    return digest_of(token)
