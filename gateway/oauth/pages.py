"""The embedded authorization server's pages: plain HTML, no script, every value escaped. Pure.

The routes (gateway.oauth.server) send them with headers that forbid framing (`X-Frame-Options: DENY`,
CSP `frame-ancestors 'none'`), scripts and foreign form targets; forms carry a CSRF token and the signed
pending request. What the user consents to is spelled out: the client (its name as it registered, its id
and where it will be sent back), the tenant, the actor and the resource.
"""

from __future__ import annotations

from html import escape
from urllib.parse import urlsplit

_STYLE = ("body{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;color:#222}"
          "label{display:block;margin:.8rem 0 .2rem}input[type=text],input[type=password]{width:100%;padding:.4rem}"
          "button{margin:1rem .5rem 0 0;padding:.5rem 1.2rem}.err{color:#a00}.note{color:#555;font-size:.9rem}"
          "dt{font-weight:600;margin-top:.6rem}code{word-break:break-all}")


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport "
            f"content='width=device-width,initial-scale=1'><meta name=referrer content=no-referrer>"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>"
            f"{body}</body></html>")


def _hidden(**fields: str) -> str:
    return "".join(f"<input type=hidden name={name} value='{escape(value, quote=True)}'>"
                   for name, value in fields.items())


def where_back(redirect_uri: str) -> str:
    """Where the browser goes after consent, as a person should read it (scheme and host)."""
    parts = urlsplit(redirect_uri)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else f"{parts.scheme}:"


def sign_in(*, client_name: str, client_id: str, redirect_uri: str, resource: str, tenant: str | None,
            request: str, csrf: str, error: str = "", actor: str = "", tenant_value: str = "") -> str:
    """Sign in as an actor: tenant (fixed when the resource is a tenant's own), actor id, password."""
    tenant_field = (f"<p>Tenant: <b>{escape(tenant)}</b></p>{_hidden(tenant=tenant)}" if tenant is not None else
                    f"<label for=tenant>Tenant</label><input type=text id=tenant name=tenant required "
                    f"autocomplete=organization value='{escape(tenant_value, quote=True)}'>")
    err = f"<p class=err role=alert>{escape(error)}</p>" if error else ""
    return _page("Sign in to Aegress", (
        f"<p><b>{escape(client_name)}</b> wants to use the Aegress MCP gateway at <code>{escape(resource)}</code> "
        f"for you. Sign in first.</p>{err}"
        f"<form method=post action='/oauth/authorize'>{_hidden(request=request, csrf=csrf, action='sign-in')}"
        f"{tenant_field}<label for=actor>Actor id</label><input type=text id=actor name=actor required "
        f"autocomplete=username value='{escape(actor, quote=True)}'>"
        "<label for=password>Password</label><input type=password id=password name=password required "
        "autocomplete=current-password><button type=submit>Sign in</button></form>"
        f"<p class=note>Client id <code>{escape(client_id)}</code>, returning to "
        f"<code>{escape(where_back(redirect_uri))}</code>.</p>"
        "<p class=note>Have a one-time login link from your operator? Open it in this browser, then reload "
        "this page.</p>"))


def consent(*, client_name: str, client_id: str, redirect_uri: str, resource: str, tenant: str, actor: str,
            scope: str, request: str, csrf: str) -> str:
    """Allow or deny: the client acting as this actor, bound to this tenant, on this resource."""
    return _page("Allow access?", (
        f"<p><b>{escape(client_name)}</b> asks to act as <b>{escape(actor)}</b> in tenant <b>{escape(tenant)}</b> "
        "through this gateway. Every call it makes will be bound to that tenant and recorded as you.</p>"
        f"<dl><dt>Client</dt><dd>{escape(client_name)} (<code>{escape(client_id)}</code>)</dd>"
        f"<dt>Sent back to</dt><dd><code>{escape(redirect_uri)}</code></dd>"
        f"<dt>Tenant</dt><dd>{escape(tenant)}</dd><dt>Actor</dt><dd>{escape(actor)}</dd>"
        f"<dt>Resource</dt><dd><code>{escape(resource)}</code></dd><dt>Scope</dt><dd>{escape(scope)}</dd></dl>"
        f"<form method=post action='/oauth/authorize'>{_hidden(request=request, csrf=csrf)}"
        "<button type=submit name=action value=allow>Allow</button>"
        "<button type=submit name=action value=deny>Deny</button></form>"
        "<p class=note>You can revoke this later: ask the operator (<code>aegress oauth grants revoke</code>).</p>"))


def login_link(*, code: str, csrf: str) -> str:
    """A login link's page: signing in takes a click (a POST), so a link preview cannot spend the link."""
    return _page("Sign in with a login link", (
        "<p>This one-time link signs this browser in to the Aegress gateway.</p>"
        f"<form method=post action='/oauth/link'>{_hidden(code=code, csrf=csrf)}"
        "<button type=submit>Sign in</button></form>"))


def message(title: str, text: str) -> str:
    return _page(title, f"<p>{escape(text)}</p>")
