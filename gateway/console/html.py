"""Server-rendered HTML of the console: plain data in, a page out. Pure.

Every value is escaped (`_e`); no script, no inline style (the CSP forbids both), no external asset. Links
carry the tenant filter as a query string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any
from urllib.parse import urlencode

from gateway.console.data import CallPath, Check, EvidenceItem, Snippet, TenantTools
from gateway.status import Status, ago
from gateway.store.base import HeldCall

PAGES: tuple[tuple[str, str], ...] = (
    ("/console/", "Gateway"),
    ("/console/tools", "Tools"),
    ("/console/evidence", "Evidence"),
    ("/console/reviews", "Reviews"),
    ("/console/clients", "Clients"),
    ("/console/deploy", "Deploy"),
)


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _href(path: str, **query: str | None) -> str:
    q = {k: v for k, v in query.items() if v}
    return _e(path + ("?" + urlencode(q) if q else ""))


def when(text: str | None) -> str:
    """A record time shown to the second; the exact time stays in the element."""
    if not text:
        return "-"
    shown = text[:19].replace("T", " ")
    return f'<time datetime="{_e(text)}" title="{_e(text)}">{_e(shown)}</time>'


def badge(kind: str, text: str | None = None) -> str:
    known = {"ok", "allow", "verified", "completed", "approved", "review_approved", "review", "held", "pending",
             "degraded", "unready", "block", "deny", "denied", "failed", "failing", "hidden", "down", "idle",
             "unchecked"}
    cls = kind if kind in known else "other"
    return f'<span class="badge {cls}">{_e(text if text is not None else kind)}</span>'


def _table(columns: Sequence[str], rows: Iterable[Sequence[str]], empty: str, table_id: str = "",
           numeric: Sequence[int] = (), ids: Sequence[int] = (), wide: Sequence[int] = ()) -> str:
    """Cells are HTML already (escape values before passing them). `wide` columns hold hashes: given room."""
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = "num" if i in numeric else "id" if i in ids else "wide" if i in wide else ""
            cells.append(f'<td class="{cls}">{cell}</td>' if cls else f"<td>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not body:
        return f'<p class="empty">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    ident = f' id="{_e(table_id)}"' if table_id else ""
    return (f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def layout(title: str, current: str, body: str, *, operator: str | None, tenants: Sequence[str] = (),
           tenant: str | None = None, footer: str = "") -> str:
    """The page frame: top bar with navigation and logout, the tenant filter, the body."""
    current_cls = ' class="current"'
    nav = "".join(f'<a href="{_href(path, tenant=tenant)}"{current_cls if path == current else ""}>{_e(name)}</a>'
                  for path, name in PAGES)
    who = ""
    if operator:
        who = ('<form class="logout" method="post" action="/console/logout">'
               f'<span class="who">operator {_e(operator)}</span><button type="submit">Log out</button></form>')
    scope = ""
    if tenants:
        chips = [f'<a class="chip{" current" if tenant is None else ""}" href="{_href(current)}">all tenants</a>']
        chips += [f'<a class="chip{" current" if t == tenant else ""}" href="{_href(current, tenant=t)}">{_e(t)}</a>'
                  for t in tenants]
        scope = f'<div class="scope" id="tenant-filter"><span>Tenant</span>{"".join(chips)}</div>'
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)} · Aegress console</title>"
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="/console/console.css"></head><body>'
        f'<header class="top"><a class="brand" href="/console/">Aegress</a><nav>{nav}</nav>{who}</header>'
        f"<main>{scope}{body}</main>"
        f'<footer>Read-only operator console. {_e(footer)}</footer></body></html>'
    )


def message_page(title: str, message: str, hint: str = "", *, login_link: bool = True) -> str:
    """An error or notice page (401, 403, 404, 429) with what was wrong and what to do."""
    more = f'<p class="sub">{_e(hint)}</p>' if hint else ""
    link = '<p><a href="/console/login">Log in with an operator token</a></p>' if login_link else ""
    body = (f'<div class="login panel" id="message"><h1>{_e(title)}</h1><p class="notice bad">{_e(message)}</p>'
            f"{more}{link}</div>")
    return layout(title, "", body, operator=None)


def login_page(error: str = "", hint: str = "") -> str:
    notice = f'<p class="notice bad" id="login-error">{_e(error)}</p>' if error else ""
    more = f'<p class="sub">{_e(hint)}</p>' if hint else ""
    body = (
        '<div class="login panel" id="login"><h1>Operator console</h1>'
        f"{notice}{more}"
        '<form method="post" action="/console/login" autocomplete="off">'
        '<label for="token">Operator token</label>'
        '<input id="token" name="token" type="password" required autofocus spellcheck="false" autocomplete="off" '
        'placeholder="aegop_..." maxlength="200">'
        '<button type="submit" id="login-button">Log in</button></form>'
        '<p class="sub">Issue one with <code>aegress operator token issue</code>. Actor tokens (aeg_...) '
        "bind MCP clients and cannot open the console.</p></div>"
    )
    return layout("Log in", "", body, operator=None)


# -- the Gateway page ------------------------------------------------------------------------------------------
def slug(text: str) -> str:
    """An element id from a label: `active (15 min)` -> `active-15-min`."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _nums(pairs: Iterable[tuple[str, int]], ident: str = "") -> str:
    cells = "".join(f'<div id="{_e(ident + "-" + slug(label))}"><b>{n:,}</b><span>{_e(label)}</span></div>'
                    for label, n in pairs)
    return f'<div class="nums">{cells}</div>'


def _gateway_lead(g: dict[str, Any]) -> str:
    if not g["running"]:
        return badge("down", "not serving") + " " + _e(g["note"])
    state = badge("ok", "ready") if g.get("ready") else badge("unready", "unready")
    parts = [f"pid {g['pid']}", g.get("url") or "", f"version {g.get('version') or 'unknown'}",
             f"up {ago(g.get('uptime_s'))}"]
    if g.get("public_url"):
        parts.insert(2, f"public URL {g['public_url']}")
    return state + " " + _e(" · ".join(p for p in parts if p))


def overview_page(status: Status, calls: Sequence[CallPath], **frame: Any) -> str:
    s = status
    hour, total = s.gate["last_hour"], s.gate["total"]
    blocked_total = total["blocked"] + total["hidden"] + total["denied"]
    ev = s.evidence
    cp = ev["last_checkpoint"]
    checkpoint = (f"last checkpoint {ago(cp['age_s'])} ago ({cp['tenant'] or 'security log'}, size {cp['size']:,})"
                  if cp else "no checkpoint signed yet")
    v = ev["last_verification"]
    if v is None:
        verified = badge("pending", "never verified") + ' <span class="muted">run aegress audit verify</span>'
    else:
        verified = (badge("verified", "verified") if v.get("ok") else badge("failed", "PROBLEM")) + \
            f" {_e(ago(v.get('age_s')))} ago by {_e(v.get('by'))}"
    active = [c for c in s.clients if c["active"]]
    d = s.deploy
    cards = [
        ("card-execution", "Tenant-bound execution",
         _nums([("allowed", total["allowed"]), ("blocked", blocked_total), ("audit events", ev["records"])],
               "execution")
         + f'<p class="sub">last hour: {hour["allowed"]:,} allowed, '
           f'{hour["blocked"] + hour["hidden"] + hour["denied"]:,} blocked</p>'),
        ("card-gate", "Policy gate",
         _nums([("allowed", total["allowed"]), ("held", total["held"]), ("blocked", total["blocked"] + total["hidden"]),
                ("denied", total["denied"])], "gate")
         + f'<p class="sub">last hour: {hour["allowed"]:,} allowed · {hour["held"]:,} held · '
           f'{hour["blocked"] + hour["hidden"]:,} blocked · {hour["denied"]:,} denied</p>'),
        ("card-binding", "Tenant binding",
         f'<p class="big">{_e(s.binding["mode"])}</p><p class="sub">{_e(s.binding["text"])}'
         + (f" · {_e(s.binding['ingress'])} ingress" if s.binding.get("ingress") else "") + "</p>"),
        ("card-evidence", "Sealed evidence",
         _nums([("sealed records", ev["records"]), ("logs", ev["logs"]),
                ("awaiting checkpoint", ev["awaiting_checkpoint"])], "evidence")
         + f'<p class="sub">{_e(checkpoint)}</p><p class="sub">{verified}</p>'),
        ("card-clients", "Active clients",
         _nums([("active (15 min)", len(active)), ("seen", len(s.clients))], "clients")
         + '<p class="sub">' + (_e(", ".join(f"{c['name']} {' '.join(c['versions'][:1])}".strip() for c in active))
                                or "no client in the last 15 minutes") + "</p>"),
        ("card-deploy", "Deployment path",
         f'<p class="big">{_e(d["path"] or "-")}</p><p class="sub">{_e(d["title"])}</p>'
         + (f'<p class="sub">public URL {_e(d["public_url"])}</p>' if d.get("public_url") else "")
         + (f'<p class="sub">store {_e(d["store"])} · bus {_e(d["bus"])}</p>' if d.get("store") else "")),
    ]
    card_html = "".join(f'<article class="card" id="{ident}"><h2>{_e(title)}</h2>{inner}</article>'
                        for ident, title, inner in cards)
    body = [
        "<h1>Gateway</h1>",
        f'<p class="lead" id="gateway-state">{_gateway_lead(s.gateway)}</p>',
        f'<section class="cards" id="counters">{card_html}</section>',
        _path_section(calls),
        '<section id="pending-reviews"><h2>Pending reviews</h2>' + _pending_table(s.reviews["items"]) + "</section>",
        '<section id="upstreams"><h2>Upstreams</h2><p class="lead">Health as the calls of the last 15 minutes '
        "saw it.</p>" + _table(
            ["tenant", "upstream", "transport", "tools", "health"],
            [(_e(u["tenant"]), _e(u["name"]), _e(u["transport"]), str(u["tools"]), badge(u["health"]))
             for u in s.upstreams], "No upstreams registered.", "upstreams-table", numeric=(3,)) + "</section>",
    ]
    return layout("Gateway", "/console/", "".join(body), **frame)


def _check_badge(check: Check) -> str:
    return f'{badge(check.state)} <span class="muted">{_e(check.detail)}</span>'


def _path_section(calls: Sequence[CallPath]) -> str:
    head = '<section id="call-path"><h2>Actor → tenant → policy → tool → evidence</h2>'
    if not calls:
        return head + '<p class="empty">No calls recorded yet.</p></section>'
    c = calls[0]
    steps = [
        ("Actor", c.actor, c.client),
        ("Tenant", c.tenant, "bound by the token"),
        ("Policy", f"v{c.policy_version} · {c.rule_id}", c.verdict),
        ("Tool", c.tool, f"upstream {c.upstream}"),
        ("Evidence", f"{c.kind} #{c.seq}", c.check.state),
    ]
    flow = "".join(f"<li><span>{_e(name)}</span><strong>{_e(main)}</strong><small>{_e(sub)}</small></li>"
                   for name, main, sub in steps)
    rows = [(when(c.time), f"{_e(c.actor)}<br><span class=\"muted\">{_e(c.client)}</span>", _e(c.tenant),
             f"v{_e(c.policy_version)} {_e(c.rule_id)}", badge(c.verdict), f"<code>{_e(c.tool)}</code>",
             f'<code class="hash">{_e(c.origin)}</code> #{c.seq}<br>{_check_badge(c.check)}') for c in calls]
    return (head + f'<p class="lead">The newest call; below it the last {len(calls)} calls.</p>'
            f'<ol class="flow" id="flow">{flow}</ol>'
            + _table(["time", "actor", "tenant", "policy", "verdict", "tool", "evidence"], rows, "", "calls-table",
                     wide=(6,))
            + "</section>")


def _pending_table(items: Sequence[dict[str, Any]]) -> str:
    return _table(["review id", "tenant", "actor", "tool", "reason", "waiting"],
                  [(f"<code>{_e(r['id'])}</code>", _e(r["tenant"]), _e(r["actor"]), f"<code>{_e(r['tool'])}</code>",
                    _e(r["reason"]), _e(ago(r["age_s"]))) for r in items],
                  "No calls are waiting for review.", "reviews-table", ids=(0,))


# -- other pages -------------------------------------------------------------------------------------------------
def tools_page(sections: Sequence[TenantTools], **frame: Any) -> str:
    body = ['<h1>Tools</h1><p class="lead">Each tool with the verdict the policy in force gives it (per actor where '
            "they differ), computed by the gateway's own policy library.</p>"]
    if not sections:
        body.append('<p class="empty">No tenants.</p>')
    for t in sections:
        body.append(f'<section class="tenant-tools" id="tools-{_e(t.tenant)}"><h2>{_e(t.tenant)}</h2>'
                    f'<p class="lead">Policy {_e(t.policy)}</p>')
        if t.error:
            body.append(f'<p class="notice bad">{_e(t.error)}</p></section>')
            continue
        if not t.complete:
            body.append('<p class="notice warn">Some upstreams are known by tool names only (not listed by the '
                        "gateway yet): their verdicts assume no annotations.</p>")
        rows = []
        for tool in t.tools:
            verdict, shown, rule, same = tool.summary
            if same:
                decided = badge(verdict) + ("" if shown else " " + badge("hidden"))
                who = "every actor" if t.actors else "(no actors yet)"
            else:
                decided = "<br>".join(f"{_e(a)}: {badge(v)}{'' if vis else ' ' + badge('hidden')}"
                                      for a, v, vis, _ in tool.verdicts)
                who = "varies by actor"
            rows.append((f"<code>{_e(tool.exposed)}</code>", _e(tool.upstream), decided, _e(rule if same else "-"),
                         _e(who), _e(tool.pin or ("-" if tool.known else "not listed yet"))))
        body.append(_table(["tool", "upstream", "verdict", "rule", "for", "pin"], rows, "No tools known.",
                           f"tools-table-{t.tenant}") + "</section>")
    return layout("Tools", "/console/tools", "".join(body), **frame)


def evidence_page(items: Sequence[EvidenceItem], status: Status, counts: dict[str, int], **frame: Any) -> str:
    v = status.evidence["last_verification"]
    if v is None:
        last = '<p class="notice warn">No full verification recorded yet: run <code>aegress audit verify</code>.</p>'
    else:
        problems = "".join(f"<li><code>{_e(log.get('origin'))}</code>: {_e(log.get('problem'))}</li>"
                           for log in v.get("logs") or [] if not log.get("ok"))
        last = (f'<p class="notice {"ok" if v.get("ok") else "bad"}">Last full verification ({_e(v.get("at"))}, by '
                f'{_e(v.get("by"))}): {"every log verified" if v.get("ok") else "PROBLEMS FOUND"}, '
                f'{int(v.get("records") or 0):,} records.</p>' + (f"<ul>{problems}</ul>" if problems else ""))
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "nothing shown"
    rows = []
    for it in items:
        outcome = it.status or it.verdict
        rows.append((
            str(it.id), when(it.time), _e(it.tenant or "(security)"), _e(it.kind), _e(it.actor),
            f"<code>{_e(it.tool)}</code>",
            badge(outcome) if outcome else "",
            f'<code class="hash">{_e(it.origin)}</code> #{it.seq}<br><code class="hash">{_e(it.leaf_hash)}</code>',
            _check_badge(it.check)))
    body = ("<h1>Evidence</h1><p class=\"lead\">The newest records with their receipts (origin, seq, leaf hash: what "
            "a response carries in <code>_meta.aegress</code>) and each record checked now against its log's newest "
            f"signed checkpoint: {_e(summary)}.</p>" + last
            + _table(["id", "time", "tenant", "kind", "actor", "tool", "verdict / outcome", "receipt", "verification"],
                     rows, "No evidence yet.", "evidence-table", numeric=(0,), wide=(7,)))
    return layout("Evidence", "/console/evidence", body, **frame)


def _held_rows(items: Sequence[HeldCall], now: float, decided: bool) -> list[tuple[str, ...]]:
    rows = []
    for h in items:
        row = [f"<code>{_e(h.id)}</code>", _e(h.tenant_id), _e(h.actor_id), f"<code>{_e(h.exposed)}</code>",
               _e(h.reason or h.rule_id)]
        if decided:
            row += [badge(h.status), _e(h.decided_by or "-"), _e(h.decision_reason or "")]
        else:
            row += [_e(h.mode), _e(ago(now - h.created_at))]
        rows.append(tuple(row))
    return rows


def reviews_page(pending: Sequence[HeldCall], decided: Sequence[HeldCall], now: float, **frame: Any) -> str:
    body = ('<h1>Reviews</h1><p class="lead">Calls the policy held for an operator. The console is read-only: decide '
            "with <code>aegress review approve ID</code> or <code>aegress review deny ID</code>.</p>"
            '<section id="pending"><h2>Pending</h2>'
            + _table(["review id", "tenant", "actor", "tool", "reason", "mode", "waiting"],
                     _held_rows(pending, now, False), "No calls are waiting for review.", "pending-table", ids=(0,))
            + '</section><section id="decided"><h2>Recently decided</h2>'
            + _table(["review id", "tenant", "actor", "tool", "reason", "decision", "by", "why"],
                     _held_rows(decided, now, True), "No decisions yet.", "decided-table", ids=(0,)) + "</section>")
    return layout("Reviews", "/console/reviews", body, **frame)


def clients_page(status: Status, snippets: Sequence[Snippet], url: str, for_tenant: str | None,
                 for_actor: str | None, actors: Sequence[str], **frame: Any) -> str:
    tenant, actor = for_tenant, for_actor
    seen = _table(["client", "versions", "calls", "last seen", "active"],
                  [(_e(c["name"]), _e(", ".join(c["versions"]) or "-"), f"{c['calls']:,}", when(c["last_seen"]),
                    badge("ok", "active") if c["active"] else badge("idle", "no")) for c in status.clients],
                  "No client has called yet.", "clients-table", numeric=(2,))
    body = ["<h1>Clients</h1>", f'<section id="clients-seen"><h2>Seen</h2>{seen}</section>',
            '<section id="setup"><h2>Setup snippets</h2>']
    if tenant is None or actor is None:
        body.append('<p class="empty">Pick a tenant (and an actor) above to see the entries for it.</p>')
    else:
        chips = "".join(f'<a class="chip{" current" if a == actor else ""}" '
                        f'href="{_href("/console/clients", tenant=tenant, actor=a)}">{_e(a)}</a>' for a in actors)
        body.append(f'<div class="scope"><span>Actor</span>{chips}</div>'
                    f'<p class="lead">For <b>{_e(actor)}</b> in <b>{_e(tenant)}</b> at <code>{_e(url)}</code>. No '
                    "snippet holds a token: clients read it from AEGRESS_MCP_GATEWAY_TOKEN (<code>aegress client "
                    "env</code>), or <code>aegress client setup</code> writes the entry and keeps the token out of "
                    "the file.</p><div class=\"snippets\">")
        for sn in snippets:
            body.append(f'<article class="panel" id="snippet-{_e(sn.client)}"><h2>{_e(sn.title)} '
                        f'<span class="muted">({_e(sn.client)}, {_e(sn.scope)} scope)</span></h2>'
                        f"<pre>{_e(sn.text)}</pre></article>")
        body.append("</div>")
    body.append("</section>")
    return layout("Clients", "/console/clients", "".join(body), **frame)


def deploy_page(paths: Sequence[dict[str, Any]], in_use: dict[str, Any], **frame: Any) -> str:
    rows = []
    for p in paths:
        mark = badge("ok", "in use") if p["name"] == in_use.get("path") else ""
        rows.append((f"<b>{_e(p['name'])}</b> {mark}", _e(p["title"]), _e(p["runtime"]), _e(p["tenant_binding"]),
                     _e(p["client_transport"]), _e(p["boundary"]), f"<code>{_e(p['runbook'])}</code>"))
    current = in_use.get("path")
    lead = (f"This gateway runs as <b>{_e(current)}</b>: {_e(in_use.get('title'))}." if current
            else "No gateway is serving this data dir.")
    body = (f'<h1>Deploy paths</h1><p class="lead" id="deploy-in-use">{lead} Recipes: '
            "<code>aegress deploy list</code>, "
            "<code>aegress deploy render</code>.</p>"
            + _table(["path", "title", "runtime", "tenant binding", "client transport", "boundary", "runbook"], rows,
                     "", "deploy-table"))
    return layout("Deploy", "/console/deploy", body, **frame)
