"""The private MCP tunnel's two checks: what the tunnel is (inventory) and whether it works end to end.

`inventory(env)` reads the tunnel's record of ownership from `MCP_TUNNEL_PROVIDER`, `MCP_TUNNEL_ID`,
`MCP_TUNNEL_WORKSPACE` and `MCP_TUNNEL_OWNER` and names exactly which are missing (pure).

`check_tunnel(url, token, evidence)` goes through the tunnel as a client would, from the outside in, and
stops at the first step that fails with one stable reason:

    health      GET <base>/health through the tunnel  -> tunnel-down, target-down, wrong-target,
                                                           gateway-unready
    initialize  POST /mcp with the bearer token        -> auth-failed, host-refused, wrong-target, protocol
    tools/list  authenticated, in that session          -> auth-failed, protocol
    evidence    a probe call to a tool no upstream has  -> evidence-missing
                (`aegress_tunnel_check_<nonce>`): the gateway refuses it without touching an upstream and
                seals a `decision` record (verdict hidden); the check finds that record in the store,
                under the token's own tenant and actor. (`tools/list` itself is not a call and leaves no
                record, so the probe is what proves that calls through the tunnel are recorded.)

Only the standard library speaks HTTP here (urllib, no redirects followed), so `aegress tunnel check`
starts without the MCP SDK or the server stack. Every request has a timeout; the evidence wait is bounded.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import secrets
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import AegressError, ConfigError
from gateway.ingress import INGRESS_MODES, PublicUrl, parse_public_url

# -- inventory ---------------------------------------------------------------------------------------
INVENTORY_ENV: tuple[tuple[str, str], ...] = (
    ("provider", "MCP_TUNNEL_PROVIDER"),
    ("id", "MCP_TUNNEL_ID"),
    ("workspace", "MCP_TUNNEL_WORKSPACE"),
    ("owner", "MCP_TUNNEL_OWNER"),
)
PROVIDERS: dict[str, str] = {
    "openai": "OpenAI Secure MCP Tunnel (tunnel-client)",
    "anthropic": "Anthropic organisation tunnel",
    "cloudflared": "Cloudflare Tunnel (cloudflared)",
    "ngrok": "ngrok agent",
    "ssh": "SSH reverse tunnel (ssh -R)",
    "other": "another tunnel or reverse proxy",
}


@dataclass(frozen=True)
class Inventory:
    """The tunnel's record: each field's value (None when unset), which env vars are missing, problems
    with what is set, and the gateway settings visible in the same environment (for context)."""

    fields: dict[str, str | None]
    missing: tuple[str, ...]
    problems: tuple[str, ...]
    provider_name: str | None
    ingress: str | None
    public_url: str | None
    auth_mode: str | None

    @property
    def ok(self) -> bool:
        return not self.missing and not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.fields, "provider_name": self.provider_name, "missing": list(self.missing),
                "problems": list(self.problems), "ingress": self.ingress, "public_url": self.public_url,
                "auth_mode": self.auth_mode}


def inventory(env: Mapping[str, str]) -> Inventory:
    """Pure: the inventory from an environment."""
    fields = {name: (env.get(var) or "").strip() or None for name, var in INVENTORY_ENV}
    missing = tuple(var for name, var in INVENTORY_ENV if fields[name] is None)
    problems: list[str] = []
    provider = fields["provider"]
    if provider is not None and provider.lower() not in PROVIDERS:
        problems.append(f"MCP_TUNNEL_PROVIDER={provider[:40]!r} is not one of: {', '.join(PROVIDERS)}.")
    ingress = (env.get("MCP_INGRESS_MODE") or "").strip().lower() or None
    if ingress is not None and ingress not in INGRESS_MODES:
        problems.append(f"MCP_INGRESS_MODE={ingress[:40]!r} is not one of: {', '.join(INGRESS_MODES)}.")
    public_url = (env.get("MCP_PUBLIC_URL") or "").strip() or None
    if public_url is not None:
        try:
            parse_public_url(public_url)
        except ConfigError as exc:
            problems.append(f"MCP_PUBLIC_URL: {exc.message}")
    return Inventory(fields, missing, tuple(problems), PROVIDERS.get((provider or "").lower()), ingress, public_url,
                     (env.get("MCP_AUTH_MODE") or "").strip() or None)


# -- the end-to-end check ----------------------------------------------------------------------------
REASONS: dict[str, str] = {
    "tunnel-down": "nothing answers at the public URL: the tunnel (or its client beside the gateway) is down",
    "target-down": "the tunnel answers but cannot reach what it points at",
    "wrong-target": "something other than Aegress answers through the tunnel",
    "gateway-unready": "Aegress answers but is not ready",
    "host-refused": "Aegress refuses the public host name",
    "auth-failed": "authentication through the tunnel failed",
    "protocol": "the MCP exchange through the tunnel failed",
    "evidence-missing": "the call through the tunnel is not in the evidence",
}
"""Every reason `check_tunnel` may report, with what it means (docs/operations/tunnel.md repeats them)."""

PROTOCOL_VERSION = "2025-11-25"
CLIENT_INFO = {"name": "aegress-tunnel-check", "version": "0.1.0"}
PROBE_PREFIX = "aegress_tunnel_check_"
_MAX_BODY = 4 * 1024 * 1024
_POLL_S = 0.25


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class EvidenceHit:
    """The probe's record as found in the store."""

    record_id: int
    origin: str
    seq: int
    tenant: str
    actor: str
    verdict: str


@dataclass
class CheckReport:
    url: str
    steps: list[Step] = field(default_factory=list)
    reason: str | None = None
    message: str = ""
    hint: str | None = None
    probe: str | None = None
    evidence: EvidenceHit | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "ok": self.ok, "reason": self.reason, "message": self.message or None,
                "hint": self.hint, "steps": [asdict(s) for s in self.steps], "probe": self.probe,
                "evidence": asdict(self.evidence) if self.evidence else None}


EvidenceLookup = Callable[[str], EvidenceHit | None]
"""probe tool name -> its record in the gateway's evidence, or None while it is not there (yet)."""
OpenEvidence = Callable[[str], EvidenceLookup]
"""token -> a lookup in the evidence of the gateway that token belongs to; raises one of our errors
(ConfigError `evidence-unavailable` or another, StoreUnavailable) when that evidence cannot be read. Called only once
the probe went through, so a check that fails earlier never opens a store."""


class _Failed(Exception):
    def __init__(self, step: str, reason: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.step, self.reason, self.message, self.hint = step, reason, message, hint


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer to report (the URL is not the gateway's), never one to follow."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _http(step: str, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float) -> _Answer:
    """One HTTP exchange; an exchange with no HTTP answer becomes `_Failed` (tunnel-down or target-down)."""
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    opener = urllib.request.build_opener(_NoRedirect())
    try:
        with opener.open(request, timeout=timeout) as response:
            return _Answer(response.status, {k.lower(): v for k, v in response.headers.items()},
                           response.read(_MAX_BODY))
    except urllib.error.HTTPError as exc:  # an HTTP answer all the same (4xx, 5xx, an unfollowed redirect)
        data = b""
        with contextlib.suppress(OSError, http.client.HTTPException):
            data = exc.read(_MAX_BODY)
        return _Answer(exc.code, {k.lower(): v for k, v in (exc.headers or {}).items()}, data)
    except urllib.error.URLError as exc:  # no connection: nothing answers at the public URL
        why = exc.reason
        if isinstance(why, ConnectionRefusedError):
            detail = "the connection was refused"
        elif isinstance(why, socket.gaierror):
            detail = "the host name does not resolve"
        elif isinstance(why, TimeoutError):
            detail = f"no connection within {timeout:g} s"
        elif isinstance(why, ssl.SSLError):
            detail = f"the TLS handshake failed ({type(why).__name__})"
        else:
            detail = f"no connection ({type(why).__name__ if isinstance(why, BaseException) else why})"
        raise _Failed(step, "tunnel-down", f"{url}: {detail}.",
                      "Start the tunnel client beside the gateway and check the public URL "
                      "(`aegress tunnel status` shows the tunnel on record).") from None
    except TimeoutError:
        raise _Failed(step, "target-down", f"{url}: connected, but no answer within {timeout:g} s.",
                      "The tunnel is up; check that the gateway it points at is running and not stalled.") from None
    except (http.client.HTTPException, ConnectionError) as exc:  # accepted, then closed without an answer
        raise _Failed(step, "target-down", f"{url}: the connection was accepted, then closed without an HTTP "
                      f"answer ({type(exc).__name__}).",
                      "The tunnel is up but nothing answers behind it: check that the gateway runs on the "
                      "address and port the tunnel forwards to.") from None


def _messages(answer: _Answer) -> list[Any]:
    """The JSON-RPC messages in an answer: one JSON body, or the `data:` of each SSE event."""
    if answer.headers.get("content-type", "").startswith("text/event-stream"):
        out: list[Any] = []
        for event in answer.body.decode("utf-8", "replace").replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(line[5:].lstrip() for line in event.split("\n") if line.startswith("data:"))
            if data.strip():
                with contextlib.suppress(ValueError):
                    out.append(json.loads(data))
        return out
    parsed = answer.json()
    return [parsed] if parsed is not None else []


def _reply(answer: _Answer, msg_id: int) -> dict[str, Any] | None:
    for message in _messages(answer):
        if isinstance(message, dict) and message.get("id") == msg_id and ("result" in message or "error" in message):
            return message
    return None


def _error_of(answer: _Answer) -> tuple[str, str]:
    """(code, message) of one of our error bodies, or ("", "") for anything else."""
    body = answer.json()
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return "", ""
    data = error.get("data") if isinstance(error.get("data"), dict) else {}
    return str(data.get("code") or ""), str(error.get("message") or "")[:300]


def classify_health(answer: _Answer) -> tuple[str | None, str, bool]:
    """Pure: (failure reason or None, detail, evidence on) for an answer to GET <base>/health."""
    body = answer.json()
    if isinstance(body, dict) and {"live", "ready", "evidence"} <= body.keys():
        evidence_on = body.get("evidence") == "on"
        if answer.status == 200 and body.get("ready") is True:
            return None, f"Aegress answers (ready, evidence {'on' if evidence_on else 'OFF'})", evidence_on
        return "gateway-unready", f"Aegress answers {answer.status} but is not ready: {body.get('reason', '?')}", \
            evidence_on
    text = answer.body[:2000]
    if answer.status == 530 or b"ERR_NGROK_3200" in text:  # Cloudflare / ngrok: the tunnel is offline
        return "tunnel-down", f"the tunnel provider answers {answer.status}: the tunnel is offline", False
    if answer.status in (502, 504) or b"ERR_NGROK_8012" in text:
        return "target-down", f"the tunnel answers {answer.status}: it cannot reach what it points at", False
    if 300 <= answer.status < 400:
        return "wrong-target", (f"the URL redirects ({answer.status}) to {answer.headers.get('location', '?')[:200]}"
                                ": give the final URL"), False
    kind = answer.headers.get("content-type", "no content type").split(";")[0]
    return "wrong-target", f"HTTP {answer.status} ({kind}) that is not Aegress's /health", False


def _headers(token: str, session: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "Authorization": f"Bearer {token}", "User-Agent": "aegress-tunnel-check/0.1"}
    if session is not None:
        headers["Mcp-Session-Id"] = session
        headers["MCP-Protocol-Version"] = PROTOCOL_VERSION
    return headers


def _refused(step: str, answer: _Answer, host: str) -> _Failed:
    """A non-200 answer to an MCP request, as the reason it stands for."""
    code, message = _error_of(answer)
    if answer.status == 421 or code == "invalid-host":
        return _Failed(step, "host-refused", f"Aegress refuses the Host {host!r}: it does not know its public name.",
                       "Start the gateway with --public-url set to this URL (or MCP_PUBLIC_URL).")
    if answer.status in (401, 403) or code in ("auth-throttled", "binding"):
        return _Failed(step, "auth-failed", f"The gateway refused the token: {message or f'HTTP {answer.status}'}",
                       "Check the token (--token-ref, AEGRESS_MCP_GATEWAY_TOKEN); `aegress token list` shows "
                       "whether it is active, `aegress token issue` makes a new one.")
    if not message:
        return _Failed(step, "wrong-target", f"{step}: HTTP {answer.status} that is not an Aegress answer.",
                       "Point the tunnel at the gateway's /mcp.")
    return _Failed(step, "protocol", f"{step}: HTTP {answer.status}: {message}")


def check_tunnel(url: str, token: str | Callable[[], str | None] | None, evidence: OpenEvidence | None, *,
                 timeout: float = 10.0, evidence_wait: float = 10.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> CheckReport:
    """Check the tunnel at `url` (a public URL ending in /mcp) end to end; see the module docstring.
    `token`: the bearer token, or how to read it (its errors, and no token, fail as `auth-failed` once the
    tunnel answered). `evidence`: how to look in the gateway's evidence (None fails the evidence step)."""
    report = CheckReport(url)
    try:
        try:
            public = parse_public_url(url)
        except ConfigError as exc:
            raise _Failed("url", "wrong-target", exc.message, exc.hint) from None
        evidence_on = _check_health(report, public, timeout)
        if callable(token):
            try:
                token = token()
            except AegressError as exc:
                raise _Failed("initialize", "auth-failed", f"Cannot read the token: {exc.message}", exc.hint) from None
        if not token:
            raise _Failed("initialize", "auth-failed", "There is no token to authenticate with.",
                          "Pass --token-ref keyring:NAME|file:/path, or --tenant/--actor for the token `aegress "
                          "token issue` kept, or set AEGRESS_MCP_GATEWAY_TOKEN.")
        report.probe = PROBE_PREFIX + secrets.token_hex(6)
        _exchange(report, public, token, report.probe, timeout)
        _find_evidence(report, token, evidence, evidence_on, evidence_wait, sleep, clock)
    except _Failed as failed:
        report.steps.append(Step(failed.step, False, failed.message))
        report.reason, report.message, report.hint = failed.reason, failed.message, failed.hint
    return report


def _check_health(report: CheckReport, public: PublicUrl, timeout: float) -> bool:
    answer = _http("health", "GET", public.health, {"Accept": "application/json",
                                                    "User-Agent": "aegress-tunnel-check/0.1"}, None, timeout)
    reason, detail, evidence_on = classify_health(answer)
    if reason is not None:
        hints = {"wrong-target": "Point the tunnel at the Aegress gateway (its /mcp and /health), never at the MCP "
                                 "server behind it.",
                 "gateway-unready": "See the gateway's /health reason and docs/operations.md (Gateway unready).",
                 "tunnel-down": "Start the tunnel (its client beside the gateway) and check its status.",
                 "target-down": "The tunnel is up: check the gateway runs at the address the tunnel forwards to."}
        raise _Failed("health", reason, f"{public.health}: {detail}.", hints.get(reason))
    report.steps.append(Step("health", True, f"{public.health}: {detail}"))
    return evidence_on


def _exchange(report: CheckReport, public: PublicUrl, token: str, probe: str, timeout: float) -> None:
    """initialize, initialized, tools/list and the probe call in one session, then end the session."""
    host = public.host_values[0]
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO}}
    answer = _http("initialize", "POST", public.url, _headers(token, None), json.dumps(init).encode(), timeout)
    if answer.status != 200:
        raise _refused("initialize", answer, host)
    reply = _reply(answer, 1)
    info = (reply or {}).get("result", {}).get("serverInfo") if isinstance((reply or {}).get("result"), dict) else None
    name = info.get("name") if isinstance(info, dict) else None
    if name != "aegress":
        raise _Failed("initialize", "wrong-target",
                      f"The MCP server behind the tunnel is {str(name)[:80]!r}, not Aegress." if name
                      else "The answer to initialize is not an MCP initialize result.",
                      "Point the tunnel at the Aegress gateway's /mcp, never at the MCP server behind it.")
    session = answer.headers.get("mcp-session-id")
    report.steps.append(Step("initialize", True, f"serverInfo {name} {info.get('version', '')}, protocol "
                             f"{reply['result'].get('protocolVersion')}"))  # type: ignore[index]
    try:
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        _http("initialize", "POST", public.url, _headers(token, session), json.dumps(note).encode(), timeout)
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
        answer = _http("tools/list", "POST", public.url, _headers(token, session), json.dumps(listing).encode(),
                       timeout)
        if answer.status != 200:
            raise _refused("tools/list", answer, host)
        reply = _reply(answer, 2)
        if reply is None or not isinstance(reply.get("result"), dict):
            why = (reply or {}).get("error", {}).get("message", "no tools/list result") if reply else "no answer"
            raise _Failed("tools/list", "protocol", f"tools/list through the tunnel failed: {str(why)[:200]}")
        tools = reply["result"].get("tools")
        report.steps.append(Step("tools/list", True, f"{len(tools) if isinstance(tools, list) else 0} tools "
                                 "listed, authenticated"))
        call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": probe, "arguments": {}}}
        answer = _http("probe", "POST", public.url, _headers(token, session), json.dumps(call).encode(), timeout)
        if answer.status != 200 or _reply(answer, 3) is None:
            raise _refused("probe", answer, host)
        report.steps.append(Step("probe", True, f"called {probe} (no upstream has it: refused and recorded)"))
    finally:
        if session is not None:
            with contextlib.suppress(_Failed):
                _http("close", "DELETE", public.url, _headers(token, session), None, timeout)


def _find_evidence(report: CheckReport, token: str, evidence: OpenEvidence | None, evidence_on: bool, wait: float,
                   sleep: Callable[[float], None], clock: Callable[[], float]) -> None:
    probe = report.probe or ""
    if not evidence_on:
        raise _Failed("evidence", "evidence-missing", "The gateway runs with --no-evidence: calls through the tunnel "
                      "are not recorded.", "Restart `aegress serve` without --no-evidence.")
    if evidence is None:
        raise _Failed("evidence", "evidence-missing", "No evidence store to look in.",
                      "Run the check where the gateway's data dir (or AEGRESS_DATABASE_URL) is.")
    try:
        lookup = evidence(token)
    except AegressError as exc:
        raise _Failed("evidence", "evidence-missing", f"Cannot read the gateway's evidence: {exc.message}",
                      exc.hint) from None
    end = clock() + max(0.0, wait)
    for _ in range(int(max(0.0, wait) / _POLL_S) + 2):  # bounded in count as well as time
        try:
            hit = lookup(probe)
        except AegressError as exc:
            raise _Failed("evidence", "evidence-missing", f"Cannot read the gateway's evidence: {exc.message}",
                          exc.hint) from None
        if hit is not None:
            report.evidence = hit
            report.steps.append(Step("evidence", True, f"{probe} recorded as {hit.origin}:{hit.seq} ({hit.verdict}, "
                                     f"tenant {hit.tenant}, actor {hit.actor})"))
            return
        if clock() >= end:
            break
        sleep(_POLL_S)
    raise _Failed("evidence", "evidence-missing", f"The probe call {probe} went through the tunnel, but no record of "
                  f"it reached the evidence within {wait:g} s.",
                  "Check the gateway's /health and logs (evidence store), and that this check reads the gateway's "
                  "data dir or database.")


def store_lookup(store: Any, token_digest: str) -> EvidenceLookup:
    """An EvidenceLookup over a store: the probe's `decision` record under the token's own tenant and actor.
    A token the store does not know means the check reads another store than the gateway's."""
    from gateway.store.base import EvidenceFilter

    info = store.find_token(token_digest)
    if info is None:
        raise ConfigError("The gateway accepted the token, but the store this check reads does not know it: it is "
                          "not the gateway's store.", code="evidence-unavailable",
                          hint="Run the check with the gateway's data dir (--data-dir / AEGRESS_HOME) or "
                               "AEGRESS_DATABASE_URL.")

    def lookup(probe: str) -> EvidenceHit | None:
        rows = store.query_evidence(EvidenceFilter(tenant=info.tenant_id, tool=probe, kind="decision"), limit=5)
        for row in rows:
            if row.actor == info.actor_id:
                return EvidenceHit(row.id, row.origin, row.seq, row.tenant, row.actor, row.verdict)
        return None

    return lookup


def local_evidence(home: Path, database_url: str | None) -> OpenEvidence:
    """OpenEvidence over the gateway's own store: its data dir (SQLite) or database, and its master key (to
    find the token by its keyed hash). Run the check where the gateway runs; the tunnel client is there too."""

    def open_evidence(token: str) -> EvidenceLookup:
        from gateway.secrets import derive_key, load_master_key, token_hash
        from gateway.store import open_store

        if not database_url and not (home / "aegress.db").exists():
            raise ConfigError(f"There is no Aegress database in {home}.", code="evidence-unavailable",
                              hint="Run the check with the gateway's data dir (--data-dir / AEGRESS_HOME) or "
                                   "AEGRESS_DATABASE_URL.")
        key = load_master_key(home, create=False)
        store = open_store(home, database_url, migrate=False)
        atexit.register(store.close)
        return store_lookup(store, token_hash(derive_key(key, "token-hash"), token))

    return open_evidence
