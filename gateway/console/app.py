"""The console's HTTP side: one ASGI app behind `/console...`, its routes, who may see them, and the headers
every answer carries (gateway.console.auth). Pages are built in a worker thread (the store may block), so a
console visit never stalls the event loop that serves `/mcp`.

    GET  /console/              the Gateway page        GET  /console/login    the login form
    GET  /console/tools         tools and verdicts      POST /console/login    token -> session cookie
    GET  /console/evidence      records, receipts       POST /console/logout   clears the cookie
    GET  /console/reviews       held calls              GET  /console/console.css
    GET  /console/clients       setup snippets
    GET  /console/deploy        deploy paths

Refusals: no credential -> 303 to the login form; an actor token -> 403; a wrong or revoked operator token
-> 401; too many failures from one address -> 429 (the `--auth-throttle` bounds of `/mcp`), each failure
also counted in the security log's `auth_failures_aggregate`. A Host the gateway does not serve -> 421,
a form posted from another origin -> 403.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from gateway import operators
from gateway.console import auth, data, html
from gateway.console.style import CSS
from gateway.errors import AegressError
from gateway.ingress import edge_host
from gateway.status import GatewayProcess, find_process, package_version, serving_facts, store_location
from gateway.store.base import OperatorToken
from gateway.transport import host_allowed

if TYPE_CHECKING:
    from gateway.config import ServeSettings
    from gateway.datadir import DataDirLock
    from gateway.transport import McpEndpoint

log = logging.getLogger("aegress.console")

MAX_FORM_BYTES = 4096
MAX_TRACKED_ADDRESSES = 10_000


class Throttle:
    """Failed console authentications per client address in a sliding window; beyond `limit` -> 429."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self._clock = limit, window_s, clock
        self._hits: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def _recent(self, peer: str) -> collections.deque[float]:
        hits = self._hits.get(peer)
        if hits is None:
            return collections.deque()
        cutoff = self._clock() - self.window
        while hits and hits[0] <= cutoff:
            hits.popleft()
        return hits

    def retry_after(self, peer: str) -> float | None:
        """Seconds until `peer` may try again, or None when it may now."""
        hits = self._recent(peer)
        if len(hits) < self.limit:
            return None
        return max(1.0, hits[0] + self.window - self._clock())

    def fail(self, peer: str) -> None:
        hits = self._recent(peer)
        hits.append(self._clock())
        self._hits[peer] = hits
        self._hits.move_to_end(peer)
        while len(self._hits) > MAX_TRACKED_ADDRESSES:
            self._hits.popitem(last=False)


Handler = Callable[[Request, OperatorToken], Awaitable[Response]]


class Console:
    """The ASGI app of `/console...` (mounted by gateway.server through `console_route`)."""

    def __init__(self, home: Path, settings: ServeSettings, endpoint: McpEndpoint, master_key: bytes,
                 lock: DataDirLock) -> None:
        self.home = home
        self.settings = settings
        self.endpoint = endpoint
        self.store = endpoint.pipeline.store
        self.recorder = endpoint.pipeline.recorder
        self._operator_key = operators.operator_key(master_key)
        self._session_key = auth.session_key(master_key)
        self._version = package_version()
        self._throttle = Throttle(settings.limits.auth_failures, settings.limits.auth_failure_window_s)
        public = settings.public_url
        self._public_origins = (public[: public.index("/", public.index("//") + 2)],) if public else ()
        # what `aegress status` reads about this gateway (the lock file; never a secret)
        lock.describe(serving_facts(settings, evidence_on=self.recorder.enabled,
                                    store_backend=store_location(self.store)[0]))
        self._pages: dict[str, Handler] = {
            "/console": self._overview, "/console/": self._overview, "/console/tools": self._tools,
            "/console/evidence": self._evidence, "/console/reviews": self._reviews,
            "/console/clients": self._clients, "/console/deploy": self._deploy,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self._route(request)
        except AegressError as exc:  # the store is unavailable, and the like
            log.warning("console page failed: %s", exc.message)
            response = self._page(html.message_page("Unavailable", exc.message, exc.hint or "", login_link=False),
                                  503 if exc.http_status == 503 else 500)
        for name, value in auth.SECURITY_HEADERS:
            response.headers[name] = value
        if "cache-control" not in response.headers:
            for name, value in auth.NO_STORE:
                response.headers[name] = value
        await response(scope, receive, send)

    # -- routing -------------------------------------------------------------------------------------------
    async def _route(self, request: Request) -> Response:
        path, method = request.url.path, request.method
        if not host_allowed(self._host(request), self.endpoint.allowed_hosts):
            return self._page(html.message_page(
                "Unknown address", "This gateway does not serve the console under this host name.",
                "Open it at the gateway's own address or its --public-url.", login_link=False), 421)
        if path == "/console/console.css":
            if method not in ("GET", "HEAD"):
                return self._not_allowed("GET, HEAD")
            return Response(CSS, media_type="text/css", headers={"cache-control": "max-age=300"})
        if path == "/console/login":
            if method in ("GET", "HEAD"):
                return self._page(html.login_page())
            if method == "POST":
                return await self._login(request)
            return self._not_allowed("GET, HEAD, POST")
        if path == "/console/logout":
            if method != "POST":
                return self._not_allowed("POST")
            if not self._same_origin(request):
                return self._cross_origin()
            response = RedirectResponse("/console/login", status_code=303)
            response.raw_headers.append((b"set-cookie", auth.cleared_cookie().encode()))
            return response
        handler = self._pages.get(path)
        if handler is None:
            return self._page(html.message_page("Not found", f"No console page at {path[:200]}.",
                                                "Start at /console/.", login_link=False), 404)
        if method not in ("GET", "HEAD"):
            return self._not_allowed("GET, HEAD")
        operator, refusal = await self._operator(request)
        if refusal is not None:
            return refusal
        assert operator is not None
        return await handler(request, operator)

    def _host(self, request: Request) -> str | None:
        host = request.headers.get("host")
        if self.endpoint.trusted_proxies:
            host = edge_host(self._peer(request), host, request.headers.getlist("x-forwarded-host"),
                             self.endpoint.trusted_proxies)
        return host

    @staticmethod
    def _peer(request: Request) -> str:
        return request.client.host if request.client else ""

    def _same_origin(self, request: Request) -> bool:
        return auth.same_origin(request.headers.get("origin"), self._host(request), self._public_origins)

    @staticmethod
    def _page(text: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(text, status_code=status)

    def _not_allowed(self, allow: str) -> Response:
        response = self._page(html.message_page("Method not allowed", "The console is read-only.", login_link=False),
                              405)
        response.headers["allow"] = allow
        return response

    def _cross_origin(self) -> Response:
        return self._page(html.message_page("Refused", "The form was posted from another site.",
                                            "Use the console's own pages."), 403)

    # -- who is asking -------------------------------------------------------------------------------------
    def _refuse(self, request: Request, status: int, message: str, hint: str, reason: str, *,
                form: bool = False) -> Response:
        self._throttle.fail(self._peer(request))
        self.recorder.auth_failure(reason)
        text = html.login_page(message, hint) if form else html.message_page(
            "Not allowed" if status == 403 else "Not logged in", message, hint)
        response = self._page(text, status)
        if status == 401:
            response.headers["www-authenticate"] = 'Bearer realm="aegress console"'
        return response

    async def _check_token(self, request: Request, token: str, *, form: bool = False
                           ) -> tuple[OperatorToken | None, Response | None]:
        wait = self._throttle.retry_after(self._peer(request))
        if wait is not None:
            response = self._page(html.message_page("Too many attempts", "Too many failed logins from this address.",
                                                    f"Try again in {int(wait)} s."), 429)
            response.headers["retry-after"] = str(int(wait))
            return None, response
        if not token:
            return None, self._refuse(request, 401, "Malformed Authorization header.",
                                      "Send Authorization: Bearer <operator token>.", "console-malformed", form=form)
        if operators.looks_like_actor_token(token):
            return None, self._refuse(
                request, 403, "That is an actor token (aeg_...): it binds an MCP client to one tenant and one "
                "actor, and never opens the console.", "Log in with an operator token (aegop_...): `aegress "
                "operator token issue` prints one.", "console-actor-token", form=form)
        info = await asyncio.to_thread(operators.authenticate, self.store, self._operator_key, token)
        if info is None:
            return None, self._refuse(request, 401, "The operator token is invalid or revoked.",
                                      "Issue one with `aegress operator token issue`.", "console-invalid-token",
                                      form=form)
        return info, None

    async def _operator(self, request: Request) -> tuple[OperatorToken | None, Response | None]:
        token = auth.bearer(request.headers.get("authorization"))
        if token is not None:
            return await self._check_token(request, token)
        token_id = auth.check_session(self._session_key, request.cookies.get(auth.SESSION_COOKIE), time.time())
        if token_id is not None:
            info = await asyncio.to_thread(self.store.get_operator_token, token_id)
            if info is not None and info.active:
                return info, None
            response = self._page(html.login_page("Your session ended: its operator token was revoked.",
                                                  "Log in with an active operator token."), 401)
            response.raw_headers.append((b"set-cookie", auth.cleared_cookie().encode()))
            return None, response
        return None, RedirectResponse("/console/login", status_code=303)

    async def _login(self, request: Request) -> Response:
        if not self._same_origin(request):
            return self._cross_origin()
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            return self._page(html.login_page("Send the login form (application/x-www-form-urlencoded)."), 415)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return self._page(html.login_page("The form is too large."), 413)
        values = parse_qs(body.decode("utf-8", "replace"), max_num_fields=5).get("token") or [""]
        info, refusal = await self._check_token(request, values[0].strip(), form=True)
        if refusal is not None:
            return refusal
        assert info is not None
        log.info("console login: operator token %s", info.id)
        response = RedirectResponse("/console/", status_code=303)
        cookie = auth.session_cookie(auth.make_session(self._session_key, info.id, time.time()))
        response.raw_headers.append((b"set-cookie", cookie.encode()))
        return response

    # -- pages ---------------------------------------------------------------------------------------------
    def _process(self) -> GatewayProcess:
        """This gateway, as `aegress status` would see it (no HTTP round trip to itself)."""
        proc = find_process(self.home, probe=False)
        reason = self.recorder.unready_reason()
        if self.endpoint.draining:
            reason = "draining: the gateway is shutting down"
        health = {"ready": reason is None, "reason": reason,
                  "evidence": "on" if self.recorder.enabled else "off (--no-evidence)"}
        return dataclasses.replace(proc, running=True, pid=os.getpid(), health=health, note="")

    async def _tenant(self, request: Request) -> tuple[str | None, list[str], Response | None]:
        tenants = await asyncio.to_thread(data.tenant_ids, self.store)
        wanted = request.query_params.get("tenant") or None
        if wanted is not None and wanted not in tenants:
            return None, tenants, self._page(html.message_page(
                "Not found", f"No tenant {wanted[:100]!r}.", "Pick one from the tenant filter.", login_link=False), 404)
        return wanted, tenants, None

    def _frame(self, operator: OperatorToken, tenants: list[str], tenant: str | None) -> dict[str, Any]:
        return {"operator": operator.label or operator.id, "tenants": tenants, "tenant": tenant,
                "footer": f"Aegress {self._version} · {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S')} UTC"}

    async def _overview(self, request: Request, operator: OperatorToken) -> Response:
        tenant, tenants, refusal = await self._tenant(request)
        if refusal is not None:
            return refusal

        def build() -> str:
            now = datetime.now(UTC)
            status = data.gateway_status(self.store, self.home, self._process(), now, tenant)
            calls = data.recent_calls(self.store, self.home, tenant)
            return html.overview_page(status, calls, **self._frame(operator, tenants, tenant))

        return self._page(await asyncio.to_thread(build))

    async def _tools(self, request: Request, operator: OperatorToken) -> Response:
        tenant, tenants, refusal = await self._tenant(request)
        if refusal is not None:
            return refusal

        def build() -> str:
            sections = [data.tenant_tools(self.store, t) for t in ([tenant] if tenant else tenants)]
            return html.tools_page(sections, **self._frame(operator, tenants, tenant))

        return self._page(await asyncio.to_thread(build))

    async def _evidence(self, request: Request, operator: OperatorToken) -> Response:
        tenant, tenants, refusal = await self._tenant(request)
        if refusal is not None:
            return refusal

        def build() -> str:
            items = data.recent_evidence(self.store, self.home, tenant)
            status = data.gateway_status(self.store, self.home, self._process(), datetime.now(UTC), tenant)
            return html.evidence_page(items, status, data.summarise(items), **self._frame(operator, tenants, tenant))

        return self._page(await asyncio.to_thread(build))

    async def _reviews(self, request: Request, operator: OperatorToken) -> Response:
        tenant, tenants, refusal = await self._tenant(request)
        if refusal is not None:
            return refusal

        def build() -> str:
            pending, decided = data.reviews(self.store, tenant)
            return html.reviews_page(pending, decided, time.time(), **self._frame(operator, tenants, tenant))

        return self._page(await asyncio.to_thread(build))

    async def _clients(self, request: Request, operator: OperatorToken) -> Response:
        tenant, tenants, refusal = await self._tenant(request)
        if refusal is not None:
            return refusal
        url = self.settings.public_url or f"{request.base_url}mcp"
        wanted_actor = request.query_params.get("actor") or None

        def build() -> tuple[str, int]:
            actors = [a.id for a in self.store.list_actors(tenant)] if tenant else []
            actor = wanted_actor or (actors[0] if actors else None)
            if actor is not None and actor not in actors:
                return html.message_page("Not found", f"No actor {actor[:100]!r} in tenant {tenant!r}.",
                                         "Pick one from the actor filter.", login_link=False), 404
            snippets = data.client_snippets(url, tenant, actor) if tenant and actor else []
            status = data.gateway_status(self.store, self.home, self._process(), datetime.now(UTC), tenant)
            return html.clients_page(status, snippets, url, tenant, actor, actors,
                                     **self._frame(operator, tenants, tenant)), 200

        text, code = await asyncio.to_thread(build)
        return self._page(text, code)

    async def _deploy(self, request: Request, operator: OperatorToken) -> Response:
        tenant, tenants, refusal = await self._tenant(request)
        if refusal is not None:
            return refusal

        def build() -> str:
            from gateway.deploy import PATHS
            from gateway.status import deploy_in_use

            proc = self._process()
            in_use = deploy_in_use(proc.facts, proc.running)
            return html.deploy_page([p.as_dict() for p in PATHS], in_use, **self._frame(operator, tenants, tenant))

        return self._page(await asyncio.to_thread(build))
