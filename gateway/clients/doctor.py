"""`client doctor`, the pure half: how a client will reach the gateway with the entry we found
(`plan`), and what a failure means in the user's words (`explain`).

The CLI does the I/O in between: it reads the token where the client would (the environment, the
headersHelper's output, or the keyring for the bridge), then probes the gateway with
`gateway.bridge.probe` and hands any error to `explain`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.clients.codex import codex_url
from gateway.clients.model import ACTOR_ENV, ACTOR_HEADER, TENANT_ENV, TENANT_HEADER, TOKEN_ENV, Entry

TokenSource = Literal["env", "helper", "bridge", "oauth"]


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    ok: bool
    detail: str
    hint: str | None = None
    code: str | None = None  # stable id of the problem, for --json and tests

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"check": self.name, "ok": self.ok, "detail": self.detail}
        if self.hint:
            out["hint"] = self.hint
        if self.code:
            out["code"] = self.code
        return out


@dataclass(frozen=True)
class Plan:
    """What the client sends: the URL (Codex: with tenantId/actorId), identity headers, and where the
    token comes from."""

    url: str
    tenant: str | None
    actor: str | None
    source: TokenSource
    token_env: str | None = None  # source == "env"
    command: tuple[str, ...] = ()  # source == "helper": shell command; "bridge": the argv
    identity_headers: dict[str, str] = field(default_factory=dict)


class PlanProblem(Exception):
    def __init__(self, check: Check) -> None:
        super().__init__(check.detail)
        self.check = check


def plan(client: str, entry: Entry) -> Plan:
    """How `client` reaches the gateway with `entry`; raises PlanProblem when it cannot."""
    if not entry.url:
        raise PlanProblem(Check("entry", False, f"the {entry.name!r} entry has no URL", _rerun(client, entry),
                                code="entry-incomplete"))
    identity: dict[str, str] = {}
    if entry.tenant:
        identity[TENANT_HEADER] = entry.tenant
    if entry.actor:
        identity[ACTOR_HEADER] = entry.actor
    if client == "claude-desktop" and entry.helper:
        return Plan(entry.url, entry.tenant, entry.actor, "bridge", command=tuple(shlex.split(entry.helper)),
                    identity_headers=identity)
    if entry.helper:
        return Plan(entry.url, entry.tenant, entry.actor, "helper", command=(entry.helper,))
    if not entry.token_env:  # an OAuth-mode entry (the client signs in), or a broken bearer one: the probe says
        return Plan(entry.url, entry.tenant, entry.actor, "oauth", identity_headers=identity)
    if client == "codex":
        url = codex_url(entry.url, entry.tenant, entry.actor) if entry.tenant and entry.actor else entry.url
        return Plan(url, entry.tenant, entry.actor, "env", token_env=entry.token_env)
    return Plan(entry.url, entry.tenant, entry.actor, "env", token_env=entry.token_env, identity_headers=identity)


def env_hint(tenant: str | None, actor: str | None) -> str:
    """How to put the token into the environment a client starts from."""
    t = shlex.quote(tenant or "TENANT")
    a = shlex.quote(actor or "ACTOR")
    return (f'Run `eval "$(aegress client env --tenant {t} --actor {a})"` in the shell that starts the client '
            f"(it exports {TOKEN_ENV}, {TENANT_ENV} and {ACTOR_ENV}).")


def issue_hint(tenant: str | None, actor: str | None) -> str:
    t = shlex.quote(tenant or "TENANT")
    a = shlex.quote(actor or "ACTOR")
    return f"Issue a new token with `aegress token issue --tenant {t} --actor {a}`."


def explain(error: Any, p: Plan) -> Check:
    """A probe failure in the user's words. `error` is one of gateway.bridge's errors, recognised by
    its `code` so this module stays free of the HTTP stack."""
    kind = getattr(error, "code", None)
    who = f"tenant {p.tenant!r}, actor {p.actor!r}"
    refresh = env_hint(p.tenant, p.actor) if p.source == "env" else None
    if kind == "gateway-unreachable":
        return Check("gateway", False, f"gateway down: nothing answers at {p.url} ({error.reason})",
                     "Start it with `aegress serve` (or check the entry's URL).", code="gateway-down")
    if kind == "gateway-rejected":
        if error.status == 401:
            if error.error_code == "invalid-token" or "invalid_token" in (error.www_authenticate or ""):
                hint = issue_hint(p.tenant, p.actor) + (f" Then {refresh[0].lower()}{refresh[1:]}" if refresh else "")
                return Check("token", False, "the gateway refused the token: it is revoked or unknown", hint,
                             code="token-revoked")
            return Check("token", False, f"the gateway got no usable token ({error.gateway_message})",
                         refresh or issue_hint(p.tenant, p.actor), code="token-missing")
        if error.status == 403 and error.error_code == "binding":
            return Check("binding", False,
                         f"tenant mismatch: the entry claims {who}, but the token belongs to another "
                         f"tenant or actor ({error.gateway_message})",
                         "Use the token issued for this tenant and actor"
                         + (f": {refresh[0].lower()}{refresh[1:]}" if refresh else ", or run setup again.")
                         , code="tenant-mismatch")
        if error.status in (403, 421) and error.error_code in ("invalid-host", "invalid-origin"):
            return Check("gateway", False, f"the gateway refused the request: {error.gateway_message}",
                         "Start the gateway with --allowed-host for the host name in the entry's URL.",
                         code="host-refused")
        if error.status == 404:
            return Check("gateway", False, f"no MCP endpoint at {p.url} (HTTP 404)",
                         "The gateway serves MCP at /mcp; fix the URL with `aegress client setup --url`.",
                         code="wrong-url")
        return Check("gateway", False, f"the gateway answered HTTP {error.status}: {error.gateway_message}",
                     code=error.error_code or "gateway-error")
    if isinstance(error, TimeoutError):
        return Check("gateway", False, f"no answer from {p.url} in time", "Is the gateway overloaded or stuck?",
                     code="gateway-timeout")
    if kind == "gateway-protocol":
        return Check("gateway", False, f"the server at {p.url} did not speak MCP as expected: {error.message}",
                     "Check that the URL points at an Aegress gateway's /mcp endpoint.", code="protocol")
    return Check("gateway", False, f"unexpected failure: {type(error).__name__}", code="unexpected")


def explain_challenge(p: Plan, status: int | None, www_authenticate: str, metadata: Any) -> Check:
    """Pure: what an entry without a token meets at the gateway. An OAuth-mode gateway answers 401 with a
    challenge naming its resource metadata, whose `resource` must be the entry's URL (RFC 9728): then the
    client can sign in. Anything else means the entry needs a token (a bearer-mode gateway)."""
    if status is None:
        return Check("gateway", False, f"gateway down: nothing answers at {p.url}",
                     "Start it with `aegress serve` (or check the entry's URL).", code="gateway-down")
    if status != 401 or "resource_metadata=" not in www_authenticate:
        return Check("oauth", False, f"the gateway at {p.url} does not offer sign-in (HTTP {status}); this entry "
                     "holds no token", "If the gateway takes tokens, run setup again with --auth bearer.",
                     code="not-oauth")
    resource = metadata.get("resource") if isinstance(metadata, dict) else None
    servers = metadata.get("authorization_servers") if isinstance(metadata, dict) else None
    if resource != p.url.split("?", 1)[0] or not isinstance(servers, list) or not servers:
        return Check("oauth", False, f"the gateway's resource metadata names {resource!r}, not {p.url}",
                     "Use the URL the gateway publishes (its --public-url) in the entry.", code="wrong-url")
    return Check("oauth", True, f"the gateway asks clients to sign in at {servers[0]}; the client does that itself "
                 "(no token needed here)")


def _rerun(client: str, entry: Entry) -> str:
    t = shlex.quote(entry.tenant or "TENANT")
    a = shlex.quote(entry.actor or "ACTOR")
    return f"Write it again with `aegress client setup {client} --tenant {t} --actor {a} --name {entry.name}`."
