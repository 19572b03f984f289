"""The embedded authorization server, end to end against a real `aegress serve` (MCP_AUTH_MODE=oauth).

A real OAuth client nobody here wrote (the `mcp` SDK's OAuthClientProvider) discovers, registers,
authorizes with PKCE (this test plays the person at the sign-in and consent pages, over HTTP), exchanges
and refreshes tokens, lists and calls tools; evidence records the actor; a revoked grant is refused.
Then the adversarial cases: CSRF, framing, code replay, PKCE mismatch, redirect URI mismatch, refresh
token reuse, and a tenant that trusts its own identity provider.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2
import pytest

from tests.e2e.oauth_support import Browser, MemoryStorage, UserAgent, oauth_client, oauth_provider, redirect_params
from tests.procs import Gateway, add_stdio_fixture, aegress, aegress_json, allow_all, run, run_gateway
from tests.servers.fake_idp import FakeIdp

PASSWORD = "alice-password-1"
CB = "http://127.0.0.1:5555/cb"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}
MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


@dataclass
class World:
    gw: Gateway
    idp: FakeIdp

    @property
    def base(self) -> str:
        return self.gw.base


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("oauth-as") / "home"
    with FakeIdp() as idp:
        for tenant in ("acme", "globex"):
            aegress(home, "tenant", "create", tenant)
            allow_all(home, tenant)
            add_stdio_fixture(home, tenant, "files", label=f"files-{tenant}")
        aegress(home, "actor", "add", "-t", "acme", "alice", "--password", input=PASSWORD + "\n")
        aegress(home, "actor", "add", "-t", "acme", "bob")
        aegress(home, "actor", "add", "-t", "globex", "gail", "--password", input=PASSWORD + "\n")
        aegress(home, "oauth", "issuer", "add", "-t", "globex", "--issuer", idp.issuer)
        env = {"MCP_AUTH_MODE": "oauth", "AEGRESS_OAUTH_ACCESS_TTL": "8"}
        with run_gateway(home, "--tenant-paths", "--auth-throttle", "10000", env=env) as gw:
            yield World(gw, idp)


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def register(world: World, **doc: Any) -> dict[str, Any]:
    body = {"redirect_uris": [CB], "client_name": "raw test client", "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"], **doc}
    r = httpx2.post(world.base + "/oauth/register", json=body, timeout=30)
    assert r.status_code == 201, r.text
    return dict(r.json())


def authorize_url(world: World, client_id: str, challenge: str | None, *, redirect: str = CB, state: str = "st-1",
                  method: str | None = "S256", **extra: str) -> str:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect, "state": state, **extra}
    if challenge is not None:
        params["code_challenge"] = challenge
    if method is not None:
        params["code_challenge_method"] = method
    return world.base + "/oauth/authorize?" + urlencode(params)


def code_for(world: World, client_id: str, challenge: str, tenant: str | None = "acme", actor: str = "alice",
             **extra: str) -> str:
    answer = Browser(world.base).sign_in_and_consent(authorize_url(world, client_id, challenge, **extra), tenant,
                                                     actor, PASSWORD)
    params = redirect_params(answer)
    assert params["state"] == "st-1" and params["iss"] == world.base
    return params["code"]


def token(world: World, **form: str) -> httpx2.Response:
    return httpx2.post(world.base + "/oauth/token", data=form, timeout=30)


def exchange(world: World, client_id: str, code: str, verifier: str, redirect: str = CB) -> httpx2.Response:
    return token(world, grant_type="authorization_code", client_id=client_id, code=code, code_verifier=verifier,
                 redirect_uri=redirect)


def mcp_status(world: World, access: str, path: str = "/mcp") -> int:
    return httpx2.post(world.base + path, headers={**MCP_HEADERS, "authorization": f"Bearer {access}"}, json=INIT,
                       timeout=30).status_code


def fresh_tokens(world: World, **extra: str) -> tuple[dict[str, Any], dict[str, Any]]:
    client = register(world)
    verifier, challenge = pkce()
    r = exchange(world, client["client_id"], code_for(world, client["client_id"], challenge, **extra), verifier)
    assert r.status_code == 200, r.text
    return client, dict(r.json())


# -- metadata --------------------------------------------------------------------------------------------
def test_metadata_names_the_embedded_server(world: World) -> None:
    asm = httpx2.get(world.base + "/.well-known/oauth-authorization-server").json()
    assert asm["issuer"] == world.base and asm["authorization_endpoint"] == world.base + "/oauth/authorize"
    assert asm["code_challenge_methods_supported"] == ["S256"] and asm["client_id_metadata_document_supported"]
    assert asm["authorization_response_iss_parameter_supported"] is True
    prm = httpx2.get(world.base + "/.well-known/oauth-protected-resource/mcp").json()
    assert prm["authorization_servers"] == [world.base, world.idp.issuer]  # acme signs in here, globex at its IdP
    assert httpx2.get(world.base + "/.well-known/oauth-protected-resource/t/acme/mcp").json()[
        "authorization_servers"] == [world.base]
    assert httpx2.get(world.base + "/.well-known/oauth-protected-resource/t/globex/mcp").json()[
        "authorization_servers"] == [world.idp.issuer]
    keys = httpx2.get(world.base + "/oauth/jwks").json()["keys"]
    assert keys and all(k["kty"] == "EC" and k["alg"] == "ES256" and "d" not in k for k in keys)
    assert not (world.gw.home / "aegress.db").read_bytes().count(b"PRIVATE KEY")  # the key is not in the database


# -- the SDK's OAuth client, end to end ------------------------------------------------------------------
def test_sdk_oauth_client_end_to_end_then_revoked(world: World) -> None:
    storage = MemoryStorage()
    agent = UserAgent(Browser(world.base), "acme", "alice", PASSWORD)
    provider = oauth_provider(world.gw.url, storage, agent)

    async def session(calls: int = 1) -> list[str]:
        async with oauth_client(world.gw.url, provider) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert "files__whoami" in names
            return [(await c.call_tool("files__whoami", {})).content[0].text for _ in range(calls)]

    assert run(session()) == ["files-acme"]
    assert len(agent.authorize_urls) == 1  # discovery, registration, one sign-in and consent
    assert "code_challenge_method=S256" in agent.authorize_urls[0]
    assert f"resource={world.base}/mcp".replace(":", "%3A").replace("/", "%2F") in agent.authorize_urls[0]
    client_id = storage.client_info.client_id
    assert client_id in {c["id"] for c in aegress_json(world.gw.home, "oauth", "clients", "list")}
    grants = [g for g in aegress_json(world.gw.home, "oauth", "grants", "list") if g["client_id"] == client_id]
    assert len(grants) == 1 and grants[0]["tenant"] == "acme" and grants[0]["actor"] == "alice"
    grant_id = grants[0]["id"]
    calls = aegress_json(world.gw.home, "audit", "query", "-t", "acme", "--tool", "files__whoami")
    intents = [r for r in calls if r["kind"] == "intent"]
    assert intents and all(r["actor"] == "alice" and r["record"]["body"]["token_id"] == grant_id for r in intents)
    consent = aegress_json(world.gw.home, "audit", "query", "-t", "acme", "--kind", "operator_change")
    assert any(r["record"]["body"]["change"] == "oauth_grant_created" and r["record"]["body"]["subject"] == grant_id
               and r["record"]["body"]["actor"] == "alice" for r in consent)

    # refresh: the access token lives 8 s; the provider refreshes before its next request, rotating
    first = storage.tokens
    time.sleep(9)
    assert run(session()) == ["files-acme"]
    assert len(agent.authorize_urls) == 1  # refreshed, not signed in again
    assert storage.tokens.access_token != first.access_token
    assert storage.tokens.refresh_token and storage.tokens.refresh_token != first.refresh_token
    assert mcp_status(world, first.access_token) == 401  # expired

    # a revoked grant is refused: the access token at once, the refresh token, and the SDK client
    aegress(world.gw.home, "oauth", "grants", "revoke", grant_id, "--yes")
    assert mcp_status(world, storage.tokens.access_token) == 401
    r = token(world, grant_type="refresh_token", client_id=client_id, refresh_token=storage.tokens.refresh_token)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    agent.refuse = True
    with pytest.raises(BaseException):  # noqa: B017 - 401 -> re-authorization, which the user refuses
        run(session())
    assert len(agent.authorize_urls) == 2


def test_sdk_client_on_a_tenants_own_resource(world: World) -> None:
    url = world.base + "/t/acme/mcp"
    storage = MemoryStorage()
    agent = UserAgent(Browser(world.base), None, "alice", PASSWORD)  # the resource fixes the tenant

    async def go() -> str:
        async with oauth_client(url, oauth_provider(url, storage, agent)) as c:
            return str((await c.call_tool("files__whoami", {})).content[0].text)

    assert run(go()) == "files-acme"
    assert mcp_status(world, storage.tokens.access_token, "/t/acme/mcp") == 200
    assert mcp_status(world, storage.tokens.access_token, "/mcp") == 401  # the audience binds the resource


# -- the authorization endpoint ---------------------------------------------------------------------------
def test_redirect_uri_and_client_errors_are_shown_never_redirected(world: World) -> None:
    client = register(world)
    _, challenge = pkce()
    browser = Browser(world.base)
    for url in (authorize_url(world, client["client_id"], challenge, redirect="http://127.0.0.1:5555/other"),
                authorize_url(world, client["client_id"], challenge, redirect="https://evil.example/cb"),
                authorize_url(world, "mcp_unknown", challenge),
                authorize_url(world, "https://127.0.0.1:1/client.json", challenge)):  # CIMD on a private address
        r = browser.get(url)
        assert r.status_code == 400 and "location" not in r.headers, url
    # with a good client and redirect URI, the other errors go back to the client
    for url, error in ((authorize_url(world, client["client_id"], None), "invalid_request"),
                       (authorize_url(world, client["client_id"], challenge, method="plain"), "invalid_request"),
                       (authorize_url(world, client["client_id"], challenge, method=None), "invalid_request"),
                       (authorize_url(world, client["client_id"], challenge, resource="https://evil.example/mcp"),
                        "invalid_target"),
                       (authorize_url(world, client["client_id"], challenge, response_type="token"),
                        "unsupported_response_type")):
        r = browser.get(url)
        assert r.status_code == 303, (url, r.text)
        params = redirect_params(r)
        assert r.headers["location"].startswith(CB) and params["error"] == error and params["state"] == "st-1"


def test_pages_deny_framing_and_set_strict_cookies(world: World) -> None:
    client = register(world)
    _, challenge = pkce()
    browser = Browser(world.base)
    page = browser.get(authorize_url(world, client["client_id"], challenge))
    consent = browser.submit(page, {"tenant": "acme", "actor": "alice", "password": PASSWORD})
    for r in (page, consent):
        assert r.headers["x-frame-options"] == "DENY"
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "script" not in csp
        assert r.headers["cache-control"] == "no-store" and r.headers["referrer-policy"] == "no-referrer"
    assert "form-action 'self' http://127.0.0.1:5555" in consent.headers["content-security-policy"]
    assert browser.set_cookies
    for cookie in browser.set_cookies:
        assert cookie.startswith("__Host-") and "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert "Path=/" in cookie and "Domain" not in cookie


def test_csrf_is_required_on_every_form(world: World) -> None:
    client = register(world)
    _, challenge = pkce()
    browser = Browser(world.base)
    page = browser.get(authorize_url(world, client["client_id"], challenge))
    creds = {"tenant": "acme", "actor": "alice", "password": PASSWORD}
    from tests.e2e.oauth_support import forms_of

    fields = forms_of(page.text)[0].fields
    attacker = Browser(world.base)  # another browser: no CSRF cookie of its own
    assert attacker.post("/oauth/authorize", {**fields, **creds}).status_code == 403
    assert browser.post("/oauth/authorize", {**fields, **creds, "csrf": "forged"}).status_code == 403
    no_token = {k: v for k, v in {**fields, **creds}.items() if k != "csrf"}
    assert browser.post("/oauth/authorize", no_token).status_code == 403
    assert browser.post("/oauth/authorize", {**fields, **creds},
                        headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site"}).status_code == 403
    assert "__Host-aegress-session" not in browser.cookies and "__Host-aegress-session" not in attacker.cookies
    consent = browser.submit(page, creds)  # the real page's form works
    assert "Allow access?" in consent.text
    forged = {**forms_of(consent.text)[0].fields, "action": "allow", "csrf": "x"}
    r = browser.post("/oauth/authorize", forged)
    assert r.status_code == 403 and "location" not in r.headers


def test_sign_in_refusals(world: World) -> None:
    client = register(world)
    _, challenge = pkce()
    browser = Browser(world.base)
    url = authorize_url(world, client["client_id"], challenge)
    for tenant, actor, password in (("acme", "alice", "wrong-password-x"), ("acme", "bob", PASSWORD),
                                    ("acme", "nobody", PASSWORD), ("globex", "gail", PASSWORD)):
        r = browser.submit(browser.get(url), {"tenant": tenant, "actor": actor, "password": password})
        assert r.status_code in (401, 403) and "Allow access?" not in r.text, (tenant, actor)
        assert "__Host-aegress-session" not in browser.cookies
    # globex trusts its own identity provider: its actors never sign in here
    r = browser.submit(browser.get(url), {"tenant": "globex", "actor": "gail", "password": PASSWORD})
    assert "own identity provider" in r.text
    # an actor's failures lock that actor for a while (and never reveal whether the password was close)
    for _ in range(10):
        browser.submit(browser.get(url), {"tenant": "acme", "actor": "bob", "password": "guess-guess-guess"})
    r = browser.submit(browser.get(url), {"tenant": "acme", "actor": "bob", "password": "guess-guess-guess"})
    assert r.status_code == 429


def test_deny_goes_back_with_access_denied(world: World) -> None:
    client = register(world)
    _, challenge = pkce()
    answer = Browser(world.base).sign_in_and_consent(authorize_url(world, client["client_id"], challenge), "acme",
                                                     "alice", PASSWORD, decision="deny")
    params = redirect_params(answer)
    assert params["error"] == "access_denied" and params["state"] == "st-1" and "code" not in params


def test_login_link_signs_in_once_and_resumes_the_authorization(world: World) -> None:
    client = register(world)
    verifier, challenge = pkce()
    browser = Browser(world.base)
    page = browser.get(authorize_url(world, client["client_id"], challenge))
    assert "Sign in" in page.text
    link = aegress(world.gw.home, "oauth", "login-link", "-t", "acme", "-a", "bob").stdout.strip()
    assert link.startswith(world.base + "/oauth/link/aegl_")
    preview = Browser(world.base).get(link)  # a link preview: shows a button, spends nothing
    assert preview.status_code == 200
    consent = browser.submit(browser.get(link))
    assert "Allow access?" in consent.text and "<b>bob</b>" in consent.text
    answer = browser.submit(consent, {"action": "allow"})
    code = redirect_params(answer)["code"]
    r = exchange(world, client["client_id"], code, verifier)
    assert r.status_code == 200 and mcp_status(world, r.json()["access_token"]) == 200
    again = Browser(world.base)
    assert "expired" in again.submit(again.get(link)).text  # single use


# -- the token endpoint -----------------------------------------------------------------------------------
def test_code_is_single_use_and_a_replay_revokes_the_grant(world: World) -> None:
    client = register(world)
    verifier, challenge = pkce()
    code = code_for(world, client["client_id"], challenge)
    first = exchange(world, client["client_id"], code, verifier)
    assert first.status_code == 200 and first.headers["cache-control"] == "no-store"
    body = first.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "mcp" and body["expires_in"] == 8
    assert mcp_status(world, body["access_token"]) == 200
    replay = exchange(world, client["client_id"], code, verifier)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert mcp_status(world, body["access_token"]) == 401  # the replay revoked what the code got
    r = token(world, grant_type="refresh_token", client_id=client["client_id"], refresh_token=body["refresh_token"])
    assert r.json()["error"] == "invalid_grant"


def test_pkce_redirect_and_client_mismatches(world: World) -> None:
    client, other = register(world), register(world)
    verifier, challenge = pkce()
    code = code_for(world, client["client_id"], challenge)
    assert exchange(world, client["client_id"], code, pkce()[0]).json()["error"] == "invalid_grant"
    # the code was spent by the failed attempt: a right verifier cannot use it afterwards
    assert exchange(world, client["client_id"], code, verifier).json()["error"] == "invalid_grant"
    code = code_for(world, client["client_id"], challenge)
    assert exchange(world, client["client_id"], code, verifier, "http://127.0.0.1:5555/other").json()[
        "error"] == "invalid_grant"
    code = code_for(world, client["client_id"], challenge)
    assert exchange(world, other["client_id"], code, verifier).json()["error"] == "invalid_grant"
    code = code_for(world, client["client_id"], challenge)
    r = token(world, grant_type="authorization_code", client_id=client["client_id"], code=code,
              redirect_uri=CB)  # no verifier at all
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    assert token(world, grant_type="password", client_id=client["client_id"]).json()["error"] == \
        "unsupported_grant_type"
    assert token(world, grant_type="authorization_code", client_id="mcp_nobody", code="x").status_code == 401


def test_refresh_rotation_and_reuse_revokes_the_grant(world: World) -> None:
    client, first = fresh_tokens(world)
    r = token(world, grant_type="refresh_token", client_id=client["client_id"], refresh_token=first["refresh_token"])
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"] and mcp_status(world, second["access_token"]) == 200
    reuse = token(world, grant_type="refresh_token", client_id=client["client_id"],
                  refresh_token=first["refresh_token"])
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    # the reuse revoked the grant: the newest tokens stop working too
    assert mcp_status(world, second["access_token"]) == 401
    r = token(world, grant_type="refresh_token", client_id=client["client_id"], refresh_token=second["refresh_token"])
    assert r.json()["error"] == "invalid_grant"
    revoked = [g for g in aegress_json(world.gw.home, "oauth", "grants", "list", "--all")
               if g["client_id"] == client["client_id"]]
    assert revoked[0]["revoked_reason"] == "refresh token reused"


def test_revocation_endpoint(world: World) -> None:
    client, tokens = fresh_tokens(world)
    r = httpx2.post(world.base + "/oauth/revoke", data={"token": tokens["refresh_token"],
                                                         "client_id": client["client_id"]}, timeout=30)
    assert r.status_code == 200
    assert mcp_status(world, tokens["access_token"]) == 401
    client, tokens = fresh_tokens(world)
    r = httpx2.post(world.base + "/oauth/revoke", data={"token": tokens["access_token"],
                                                         "client_id": client["client_id"]}, timeout=30)
    assert r.status_code == 200 and mcp_status(world, tokens["access_token"]) == 401
    assert httpx2.post(world.base + "/oauth/revoke", data={"token": "unknown", "client_id": client["client_id"]},
                       timeout=30).status_code == 200


def test_registration_rules_and_confidential_clients(world: World) -> None:
    for uris in (["http://evil.example/cb"], ["javascript:alert(1)"], ["https://app.example/cb#frag"], [],
                 ["https://u:p@app.example/cb"], "https://app.example/cb"):
        r = httpx2.post(world.base + "/oauth/register", json={"redirect_uris": uris}, timeout=30)
        assert r.status_code == 400 and r.json()["error"] in ("invalid_redirect_uri", "invalid_client_metadata"), uris
    assert httpx2.post(world.base + "/oauth/register", json={"redirect_uris": [CB], "grant_types": ["implicit"]},
                       timeout=30).status_code == 400
    native = register(world, redirect_uris=["cursor://anysphere.cursor-retrieval/oauth/callback"])
    assert native["redirect_uris"] == ["cursor://anysphere.cursor-retrieval/oauth/callback"]
    confidential = register(world, token_endpoint_auth_method="client_secret_basic")
    assert confidential["client_secret"].startswith("aegs_")
    verifier, challenge = pkce()
    code = code_for(world, confidential["client_id"], challenge)
    r = exchange(world, confidential["client_id"], code, verifier)  # no secret
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    code = code_for(world, confidential["client_id"], challenge)
    good = httpx2.post(world.base + "/oauth/token", auth=(confidential["client_id"], confidential["client_secret"]),
                       data={"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                             "redirect_uri": CB}, timeout=30)
    assert good.status_code == 200, good.text
    # revoking the client ends its grants
    first = aegress(world.gw.home, "oauth", "clients", "revoke", confidential["client_id"], "--yes")
    assert first.stdout.strip() == f"Revoked OAuth client {confidential['client_id']}."
    assert mcp_status(world, good.json()["access_token"]) == 401
    # revoking twice says so, and changes (and seals) nothing
    again = aegress_json(world.gw.home, "oauth", "clients", "revoke", confidential["client_id"], "--yes")
    assert again["changed"] is False and again["revoked_at"], again
    twice = aegress(world.gw.home, "oauth", "clients", "revoke", confidential["client_id"], "--yes")
    assert twice.stdout.strip() == f"OAuth client {confidential['client_id']} was revoked already."


def test_client_setup_and_doctor_in_oauth_mode(world: World, tmp_path: Path) -> None:
    """`client setup --auth oauth` writes no token (and needs none on this machine); `client doctor` sees
    that the gateway offers sign-in for the entry's URL."""
    user = tmp_path / "user"
    user.mkdir()
    env = {"HOME": str(user)}
    aegress(world.gw.home, "client", "setup", "cursor", "-t", "acme", "--auth", "oauth", "--url", world.gw.url, **env)
    text = (user / ".cursor" / "mcp.json").read_text()
    assert "Authorization" not in text and "AEGRESS_MCP_GATEWAY_TOKEN" not in text
    doctor = aegress(world.gw.home, "client", "doctor", "cursor", "--json", **env)
    report = json.loads(doctor.stdout)
    assert report["ok"] is True and report["checks"][-1]["check"] == "oauth", report
    listed = json.loads(aegress(world.gw.home, "client", "list", "--json", **env).stdout)
    assert [(e["client"], e["tenant"], e["actor"], e["token_from"]) for e in listed] == [("cursor", "acme", None,
                                                                                          None)]
    desktop = aegress(world.gw.home, "client", "setup", "claude-desktop", "-t", "acme", "--auth", "oauth",
                      "--url", world.gw.url, **env)
    assert "Add custom connector" in desktop.stdout and not (user / ".config" / "Claude").exists()
    missing = aegress(world.gw.home, "client", "setup", "cursor", "-t", "nope", "--auth", "oauth", check=False, **env)
    assert missing.returncode == 1 and "No tenant 'nope'" in missing.stderr


# -- signing keys ------------------------------------------------------------------------------------------
def _kid(jwt_text: str) -> str:
    header = jwt_text.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


def _published(world: World) -> list[str]:
    r = httpx2.get(world.base + "/oauth/jwks", timeout=30)
    assert r.status_code == 200, r.text
    return sorted(k["kid"] for k in r.json()["keys"])


def _within(seconds: float, check: Any) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.1)


def test_key_rotation_and_retirement_take_effect_without_a_restart(tmp_path: Path) -> None:
    """`aegress oauth key rotate` on a running gateway: within seconds it publishes both keys and signs new
    tokens with the new one, and tokens signed before still work; `retire`: within seconds a token signed by
    the retired key is refused (401), while the new key's tokens work. No restart in between."""
    home = tmp_path / "home"
    aegress(home, "tenant", "create", "acme")
    allow_all(home, "acme")
    add_stdio_fixture(home, "acme", "files")
    aegress(home, "actor", "add", "-t", "acme", "alice", "--password", input=PASSWORD + "\n")
    with run_gateway(home, "--tenant-paths", env={"MCP_AUTH_MODE": "oauth"}) as gw:
        world = World(gw, None)  # type: ignore[arg-type]  # no identity provider needed here
        _, before = fresh_tokens(world)
        old = _kid(before["access_token"])
        assert _published(world) == [old] and mcp_status(world, before["access_token"]) == 200

        rotated = aegress_json(home, "oauth", "key", "rotate", "--json")
        new = rotated["active"]
        assert new != old and sorted(rotated["keys"]) == sorted([old, new])
        _within(10, lambda: _published(world) == sorted([old, new]))
        _, after = fresh_tokens(world)
        assert _kid(after["access_token"]) == new  # signed with the new key, no restart
        assert mcp_status(world, before["access_token"]) == 200  # the old key still verifies until retired

        aegress(home, "oauth", "key", "retire", "--yes")
        _within(10, lambda: mcp_status(world, before["access_token"]) == 401)
        assert mcp_status(world, after["access_token"]) == 200
        assert _published(world) == [new]
