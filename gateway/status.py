"""What an operator asks first, for `aegress status` and the console's Gateway page.

    is a gateway serving this data dir?   the data dir's lock file (pid, URL, facts the gateway recorded
                                          at start: version, ingress, binding mode, public URL) + /health
    policy gate                           evidence counts: allowed / held / blocked / hidden / denied
    evidence                              records per log, newest checkpoints, last `audit verify`
    clients                               client names (calls table) and versions (recent evidence)
    upstreams                             tool counts; health as the last 15 minutes of calls saw it
    pending reviews, deploy path          held calls; the recorded facts mapped to gateway.deploy.PATHS

Everything is read from the data dir and the store; nothing else is contacted but the gateway's own
/health (short timeout). The summaries are pure functions of those reads (`gate_counts`,
`upstream_health`, `deploy_in_use`, ...), and `collect` puts them together. Imports stay light: no MCP
SDK, no server stack, no evidence stack, so `aegress status` starts fast.

Counting: the totals are one GROUP BY over the evidence table (a scan: ~0.1 s per million records on
SQLite); the last hour uses the time index; client versions come from the newest `RECENT_CALLS` call
records only (the calls table keeps names, not versions).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.datadir import LOCK_FILE

if TYPE_CHECKING:
    from gateway.config import ServeSettings
    from gateway.store.base import EvidenceRow, Store

ACTIVE_WINDOW = timedelta(minutes=15)
"""A client (or upstream) with a call in this window is active; upstream health looks at it too."""
GATE_WINDOW = timedelta(hours=1)
RECENT_CALLS = 1000
"""How many of the newest call records (intents and decisions) client versions are read from."""
MAX_REVIEWS = 50
HEALTH_TIMEOUT_S = 0.5
DEPLOY_PATH_ENV = "AEGRESS_DEPLOY_PATH"
"""Names the deploy path when the operator wants to say it (one of gateway.deploy.PATHS); else it is inferred."""
GATE_KEYS = ("allowed", "held", "blocked", "hidden", "denied")


# -- time formats ------------------------------------------------------------------------------------------
def evidence_time(when: datetime) -> str:
    """The evidence records' time format (`2026-01-02T03:04:05.000000Z`), which compares as text."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def calls_time(when: datetime) -> str:
    """The calls table's time format (`2026-01-02T03:04:05.000+00:00`), which compares as text."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def age_s(text: str | None, now: datetime) -> float | None:
    when = parse_time(text)
    return None if when is None else round(max(0.0, (now - when).total_seconds()), 3)


# -- what the serving gateway records (in the data dir's lock file) -------------------------------------------
def ago(seconds: float | None) -> str:
    """`12 s`, `3 min`, `2 h 5 min`, `4 d 1 h` (None: `never`)."""
    if seconds is None:
        return "never"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aegress")
    except PackageNotFoundError:
        return "unknown"


def detect_environment(env: Mapping[str, str], exists: Callable[[str], bool] = os.path.exists) -> str | None:
    """Pure given `env` and `exists`: the runtime a deploy recipe puts the gateway in, as far as it shows."""
    if env.get("AWS_LAMBDA_FUNCTION_NAME"):
        return "aws-lambda"
    if env.get("CONTAINER_APP_NAME"):
        return "azure-container-apps"
    if env.get("KUBERNETES_SERVICE_HOST"):
        return "kubernetes"
    if exists("/.dockerenv") or exists("/run/.containerenv"):
        return "container"
    return None


def serving_facts(settings: ServeSettings, *, evidence_on: bool, store_backend: str,
                  env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The facts a serving gateway records for `aegress status`: how it is reached and bound. No secret:
    the public URL carries none (gateway.ingress refuses one), a static binding is named by tenant and actor."""
    env = os.environ if env is None else env
    pinned = settings.static_binding
    return {
        "version": package_version(),
        "ingress": settings.ingress,
        "auth_mode": settings.auth_mode,
        "binding": "static" if pinned is not None else settings.auth_mode,
        "static_tenant": pinned.tenant if pinned is not None else None,
        "static_actor": pinned.actor if pinned is not None else None,
        "public_url": settings.public_url,
        "json_only": settings.limits.json_only,
        "evidence": "on" if evidence_on else "off",
        "store": store_backend,
        "bus": "redis" if env.get("AEGRESS_REDIS_URL", "").strip() else "local",
        "environment": detect_environment(env),
        "deploy_path": env.get(DEPLOY_PATH_ENV, "").strip() or None,
    }


def store_location(store: Store) -> tuple[str, str]:
    """(backend, where): a SQLite file, or a Postgres URL with its password masked."""
    location = getattr(store, "location", None)
    if isinstance(location, str):
        return "postgres", location
    return "sqlite", str(getattr(store, "path", ""))


# -- is a gateway serving this data dir? ------------------------------------------------------------------------
@dataclass(frozen=True)
class GatewayProcess:
    """The data dir's gateway as its lock file and /health show it."""

    running: bool
    pid: int | None = None
    purpose: str | None = None
    url: str | None = None
    started_at: float | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)
    health: Mapping[str, Any] | None = None
    """/health's answer (None: not asked, or no answer)."""
    note: str = ""

    def to_dict(self, now: datetime) -> dict[str, Any]:
        started = datetime.fromtimestamp(self.started_at, UTC) if self.started_at else None
        return {
            "running": self.running,
            "pid": self.pid,
            "purpose": self.purpose,
            "url": self.url,
            "public_url": self.facts.get("public_url"),
            "version": self.facts.get("version"),
            "started_at": started.isoformat(timespec="seconds") if started else None,
            "uptime_s": round((now - started).total_seconds(), 1) if started and self.running else None,
            "answering": self.health is not None,
            "ready": bool(self.health.get("ready")) if self.health is not None else None,
            "health": dict(self.health) if self.health is not None else None,
            "note": self.note,
        }


def read_lock(home: Path) -> dict[str, Any] | None:
    """The lock file's contents (without taking the lock: a starting gateway must never find it held by us)."""
    try:
        raw = (home / LOCK_FILE).read_text()
        info = json.loads(raw or "null")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    except OSError:
        return False
    return True


def health_url(mcp_url: str) -> str:
    base = mcp_url[: -len("/mcp")] if mcp_url.endswith("/mcp") else mcp_url.rstrip("/")
    return base.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:") + "/health"


def probe_health(mcp_url: str, timeout: float = HEALTH_TIMEOUT_S) -> dict[str, Any] | None:
    """GET the gateway's /health (standard library, short timeout); its JSON, or None when it does not answer.
    urllib is imported here: `aegress --help` lists `status`, and urllib.request costs it about 20 ms."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(health_url(mcp_url), timeout=timeout) as response:  # our own URL
            body = response.read(65536)
    except urllib.error.HTTPError as exc:  # 503 unready: still an answer
        body = exc.read(65536)
    except (OSError, ValueError):
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def find_process(home: Path, *, probe: bool = True, timeout: float = HEALTH_TIMEOUT_S,
                 alive: Callable[[int], bool] = pid_alive) -> GatewayProcess:
    """The gateway holding `home`, from its lock file; /health asked when `probe`."""
    info = read_lock(home)
    pid = info.get("pid") if info else None
    if not info or not isinstance(pid, int):
        return GatewayProcess(False, note="no gateway is serving this data dir")
    purpose = str(info.get("purpose") or "")
    url = info.get("url") if isinstance(info.get("url"), str) else None
    started = info.get("started_at") if isinstance(info.get("started_at"), int | float) else None
    facts = {k: v for k, v in info.items() if k not in ("pid", "purpose", "url", "started_at")}
    if not alive(pid):
        return GatewayProcess(False, pid, purpose, url, None, facts,
                              note=f"no gateway is serving this data dir (the last one, pid {pid}, is gone)")
    if purpose != "serve":
        return GatewayProcess(False, pid, purpose, url, started, facts,
                              note=f"the data dir is held by `{purpose}` (pid {pid}), not by a gateway")
    if url is None:
        return GatewayProcess(True, pid, purpose, None, started, facts, note="starting: not listening yet")
    health = probe_health(url, timeout) if probe else None
    note = "" if health is not None or not probe else (
        f"pid {pid} holds the data dir but {health_url(url)} does not answer")
    return GatewayProcess(True, pid, purpose, url, started, facts, health, note)


# -- pure summaries -----------------------------------------------------------------------------------------------
def gate_counts(rows: Iterable[tuple[str, str, int]]) -> dict[str, int]:
    """(kind, verdict, records) -> the policy gate's counters.

    allowed: intents (forwarded: `allow`, `review_approved`); held / blocked / hidden: decisions with
    verdict `review` / `deny` / `hidden`; denied: `review_denied` records (a reviewer said no)."""
    out = dict.fromkeys(GATE_KEYS, 0)
    for kind, verdict, n in rows:
        if kind == "intent":
            out["allowed"] += n
        elif kind == "decision":
            key = {"review": "held", "deny": "blocked", "hidden": "hidden"}.get(verdict)
            if key:
                out[key] += n
        elif kind == "review_denied":
            out["denied"] += n
    return out


def tenant_of_origin(origin: str) -> str | None:
    """The tenant of a tenant log's origin (`<prefix>/tenant/<id>`); None for the security log."""
    _, sep, tenant = origin.partition("/tenant/")
    return tenant if sep else None


def evidence_summary(sizes: Mapping[str, int], checkpoints: Iterable[tuple[str, int, str]],
                     verification: str | None, now: datetime, tenant: str | None = None) -> dict[str, Any]:
    """Sealed records, the newest checkpoint and its age, records not yet under a checkpoint, and the last
    `audit verify` (as `record_verification` stored it)."""
    def mine(origin: str) -> bool:
        return tenant is None or tenant_of_origin(origin) == tenant

    logs = {o: n for o, n in sizes.items() if mine(o)}
    signed = {o: (n, t) for o, n, t in checkpoints if mine(o)}
    newest = max(signed.items(), key=lambda item: item[1][1], default=None)
    last = None
    if newest is not None:
        origin, (size, signed_at) = newest
        last = {"origin": origin, "tenant": tenant_of_origin(origin), "size": size, "signed_at": signed_at,
                "age_s": age_s(signed_at, now)}
    return {
        "records": sum(logs.values()),
        "logs": len(logs),
        "awaiting_checkpoint": sum(max(0, n - signed.get(o, (0, ""))[0]) for o, n in logs.items()),
        "last_checkpoint": last,
        "last_verification": verification_view(verification, now),
    }


def verification_note(reports: Iterable[Mapping[str, Any]], now: datetime, by: str) -> str:
    """What `audit verify` keeps of a store verification (`Store.record_verification`): when, by whom,
    the result, and the first problem, per log."""
    logs = []
    for r in reports:
        finding = r.get("finding") if isinstance(r.get("finding"), dict) else None
        logs.append({"origin": r.get("origin"), "ok": bool(r.get("ok")), "records": r.get("records"),
                     "problem": (f"{finding.get('problem')}: {finding.get('message')}"[:300] if finding else None)})
    body = {"at": evidence_time(now), "by": by[:100], "ok": all(entry["ok"] for entry in logs),
            "records": sum(int(entry["records"] or 0) for entry in logs), "logs": logs}
    return json.dumps(body, sort_keys=True)


def verification_view(note: str | None, now: datetime) -> dict[str, Any] | None:
    if not note:
        return None
    try:
        value = json.loads(note)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    value["age_s"] = age_s(value.get("at"), now)
    return value


def client_versions(rows: Iterable[EvidenceRow]) -> dict[str, list[str]]:
    """Client name -> the versions recent call records (intents, decisions) name, newest first."""
    seen: dict[str, list[str]] = {}
    for row in rows:
        try:
            body = json.loads(row.data)["body"]
        except (ValueError, KeyError, TypeError):
            continue
        name, version = body.get("client_name") or "", body.get("client_version") or ""
        versions = seen.setdefault(str(name), [])
        if version and version not in versions:
            versions.append(str(version))
    return seen


def clients_summary(activity: Iterable[tuple[str, int, str]], versions: Mapping[str, list[str]],
                    now: datetime) -> list[dict[str, Any]]:
    out = []
    for name, calls, last in activity:
        seen = age_s(last, now)
        out.append({"name": name or "(unnamed)", "versions": list(versions.get(name, [])), "calls": calls,
                    "last_seen": last or None, "active": seen is not None and seen <= ACTIVE_WINDOW.total_seconds()})
    return out


_UPSTREAM_OK = ("completed", "tool_error")
_UPSTREAM_BAD = ("failed", "timeout")


def upstream_health(outcomes: Mapping[str, int]) -> str:
    """Pure: `ok`, `degraded`, `failing` or `idle`, from recent calls' outcomes (the calls table's legacy
    names). An upstream that answered (a tool error too) is up; transport failures and timeouts are not;
    refusals and cancellations say nothing about it."""
    good = sum(outcomes.get(k, 0) for k in _UPSTREAM_OK)
    bad = sum(outcomes.get(k, 0) for k in _UPSTREAM_BAD)
    if good == 0 and bad == 0:
        return "idle"
    if bad == 0:
        return "ok"
    return "failing" if good == 0 else "degraded"


def binding_view(facts: Mapping[str, Any], running: bool) -> dict[str, Any]:
    """The tenant binding mode: bearer tokens, a static (tunnel) binding of one token, or OAuth."""
    mode = str(facts.get("binding") or "") if running else ""
    if mode == "static":
        text = (f"static binding: only one token, of tenant {facts.get('static_tenant')} and actor "
                f"{facts.get('static_actor')}")
    elif mode == "bearer":
        text = "bearer tokens, each bound to one tenant and one actor"
    elif mode == "oauth":
        text = "OAuth: each authorization bound to one tenant and one actor"
    elif running:
        mode, text = "unknown", "not recorded by this gateway (an older version, or still starting)"
    else:
        mode, text = "unknown", "no gateway is serving this data dir"
    return {"mode": mode, "ingress": facts.get("ingress") if running else None, "text": text}


def deploy_in_use(facts: Mapping[str, Any], running: bool) -> dict[str, Any]:
    """Which deploy path (gateway.deploy.PATHS) the serving gateway runs as, from the facts it recorded:
    `AEGRESS_DEPLOY_PATH` when the operator set it; else JSON-only mode is the Lambda path, tunnel ingress
    the tunnel path, an Azure Container App or any container the Azure or Docker path; otherwise `direct`
    (aegress serve on this host)."""
    from gateway.deploy import PATHS, find_path

    base = {"ingress": facts.get("ingress"), "public_url": facts.get("public_url"), "store": facts.get("store"),
            "bus": facts.get("bus"), "environment": facts.get("environment")}
    if not running:
        return {"path": None, "title": "no gateway is serving this data dir", "runbook": None, **base}
    env = facts.get("environment")
    named = facts.get("deploy_path")
    if named in {p.name for p in PATHS}:
        name = str(named)
    elif facts.get("json_only") or env == "aws-lambda":
        name = "aws-lambda"
    elif facts.get("ingress") == "tunnel":
        name = "tunnel"
    elif env == "azure-container-apps":
        name = "azure"
    elif env in ("container", "kubernetes"):
        name = "docker"
    else:
        return {"path": "direct", "title": "aegress serve on this host (direct ingress)",
                "runbook": "docs/operations.md", **base}
    path = find_path(name)
    return {"path": path.name, "title": path.title, "runbook": path.runbook, **base}


# -- putting it together -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Status:
    """One `aegress status` screen (or the console's counters), as plain JSON-ready values."""

    generated_at: str
    data_dir: str
    store: dict[str, str]
    tenant: str | None
    gateway: dict[str, Any]
    binding: dict[str, Any]
    gate: dict[str, dict[str, int]]
    evidence: dict[str, Any]
    clients: list[dict[str, Any]]
    upstreams: list[dict[str, Any]]
    reviews: dict[str, Any]
    deploy: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def clients_active(self) -> int:
        return sum(1 for c in self.clients if c["active"])


def _recent_call_records(store: Store, tenant: str | None) -> list[EvidenceRow]:
    from gateway.store.base import EvidenceFilter

    rows: list[EvidenceRow] = []
    for kind in ("intent", "decision"):
        rows += store.query_evidence(EvidenceFilter(tenant=tenant or "", kind=kind), limit=RECENT_CALLS)
    rows.sort(key=lambda r: r.id, reverse=True)
    return rows[:RECENT_CALLS]


def collect(store: Store, home: Path, process: GatewayProcess, *, now: datetime,
            tenant: str | None = None) -> Status:
    """Every section of the status, for one tenant or all; reads only (the store and `process`)."""
    backend, location = store_location(store)
    hour_ago, window = evidence_time(now - GATE_WINDOW), calls_time(now - ACTIVE_WINDOW)
    gate = {"last_hour": gate_counts(store.count_evidence(tenant, hour_ago)),
            "total": gate_counts(store.count_evidence(tenant))}
    evidence = evidence_summary(store.evidence_sizes(), store.latest_checkpoints(), store.last_verification(), now,
                                tenant)
    evidence["recording"] = process.facts.get("evidence") if process.running else None
    clients = clients_summary(store.client_activity(tenant), client_versions(_recent_call_records(store, tenant)),
                              now)
    outcomes: dict[tuple[str, str], dict[str, int]] = {}
    for t, upstream, outcome, n in store.upstream_activity(window, tenant):
        outcomes.setdefault((t, upstream), {})[outcome] = n
    upstreams = []
    tenants = [tenant] if tenant is not None else [t.id for t in store.list_tenants()]
    for t in tenants:
        tools = store.get_upstream_tools(t)
        definitions = store.get_tool_definitions(t)
        for spec in store.list_upstreams(t):
            recent = outcomes.get((t, spec.name), {})
            count = len(definitions.get(spec.name) or tools.get(spec.name) or [])
            upstreams.append({"tenant": t, "name": spec.name, "transport": spec.transport, "tools": count,
                              "health": upstream_health(recent), "recent_calls": recent})
    pending = store.list_held_calls(tenant, "pending", limit=MAX_REVIEWS + 1)
    more, pending = len(pending) > MAX_REVIEWS, pending[:MAX_REVIEWS]
    now_s = now.timestamp()
    reviews = {"pending": len(pending), "more": more, "items": [
        {"id": h.id, "tenant": h.tenant_id, "actor": h.actor_id, "tool": h.exposed, "upstream": h.upstream,
         "reason": h.reason, "mode": h.mode, "age_s": round(max(0.0, now_s - h.created_at), 1)} for h in pending]}
    return Status(
        generated_at=evidence_time(now), data_dir=str(home), store={"backend": backend, "location": location},
        tenant=tenant, gateway=process.to_dict(now), binding=binding_view(process.facts, process.running), gate=gate,
        evidence=evidence, clients=clients, upstreams=upstreams, reviews=reviews,
        deploy=deploy_in_use(process.facts, process.running),
    )


def remember_verification(store: Store, reports: Iterable[Mapping[str, Any]], now: datetime, by: str) -> bool:
    """Keep an `audit verify` result for status and the console; False when the store would not take it (the
    verification's own answer never depends on this)."""
    from gateway.errors import AegressError

    try:
        store.record_verification(verification_note(reports, now, by))
    except AegressError:
        return False
    return True
