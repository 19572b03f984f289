"""OAuth mode as a resource server: a real `aegress serve` (MCP_AUTH_MODE=oauth) trusting two identity
providers the test runs on loopback (tests/servers/fake_idp.py), raw HTTP and the official SDK client.

Tenants: acme trusts IdP A alone (actor from `email`); globex and initech share IdP B, told apart by its
`org` claim. Every refusal the issue lists is tried; so are claim mapping, issuer-to-tenant binding,
per-tenant resource URIs, key rotation with rate-limited refresh, evidence and what reaches the upstream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest

from tests.procs import (
    Gateway,
    add_stdio_fixture,
    aegress,
    aegress_json,
    allow_all,
    mcp_client,
    run,
    run_gateway,
    run_http_upstream,
)
from tests.servers.fake_idp import FakeIdp, new_key

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}
MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


@dataclass
class World:
    gw: Gateway
    a: FakeIdp
    b: FakeIdp

    @property
    def base(self) -> str:
        return self.gw.base

    def aud(self, tenant: str | None = None) -> str:
        return self.base + ("/mcp" if tenant is None else f"/t/{tenant}/mcp")

    def acme(self, *, kid: str | None = "", headers: dict[str, Any] | None = None, **claims: Any) -> str:
        return self.a.mint({"aud": self.aud(), "email": "alice@acme.example", "sub": "a-1", "scope": "mcp", **claims},
                           kid=kid, headers=headers)

    def globex(self, **claims: Any) -> str:
        return self.b.mint({"aud": self.aud(), "org": "globex-org", "sub": "bob", "scp": ["mcp", "other"], **claims})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("oauth-rs") / "home"
    with FakeIdp(path="/realms/acme") as a, FakeIdp() as b, run_http_upstream("web") as (web_url, _):
        for tenant in ("acme", "globex", "initech"):
            aegress(home, "tenant", "create", tenant)
            allow_all(home, tenant)
            add_stdio_fixture(home, tenant, "files", label=f"files-{tenant}")
        aegress(home, "upstream", "add", "--tenant", "acme", "web", "--url", web_url, "--allow-private")
        aegress(home, "oauth", "issuer", "add", "-t", "acme", "--issuer", a.issuer, "--actor-claim", "email")
        aegress(home, "oauth", "issuer", "add", "-t", "globex", "--issuer", b.issuer, "--tenant-claim", "org",
                "--tenant-value", "globex-org")
        aegress(home, "oauth", "issuer", "add", "-t", "initech", "--issuer", b.issuer, "--tenant-claim", "org",
                "--tenant-value", "initech-org")
        env = {"MCP_AUTH_MODE": "oauth", "AEGRESS_OAUTH_JWKS_MIN_REFRESH": "3"}
        with run_gateway(home, "--tenant-paths", "--auth-throttle", "10000", "--log-level", "debug", env=env) as gw:
            yield World(gw, a, b)


def post(world: World, token: str | None, path: str = "/mcp", headers: dict[str, str] | None = None,
         body: Any = INIT) -> httpx2.Response:
    hdrs = {**MCP_HEADERS, **(headers or {})}
    if token is not None:
        hdrs["authorization"] = f"Bearer {token}"
    return httpx2.post(world.base + path, headers=hdrs, json=body, timeout=30)


def challenge_of(r: httpx2.Response) -> str:
    return r.headers.get("www-authenticate", "")


# -- metadata and challenges -----------------------------------------------------------------------------
def test_protected_resource_metadata_is_built_from_the_public_url(world: World) -> None:
    for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"):
        r = httpx2.get(world.base + path, headers={"x-forwarded-host": "evil.example", "forwarded": "host=evil"})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["resource"] == world.aud()
        assert doc["authorization_servers"] == [world.a.issuer, world.b.issuer]  # every tenant has its IdP
        assert doc["bearer_methods_supported"] == ["header"] and doc["scopes_supported"] == ["mcp"]
        assert r.headers["access-control-allow-origin"] == "*"
    r = httpx2.get(world.base + "/.well-known/oauth-protected-resource/t/globex/mcp")
    assert r.json()["resource"] == world.aud("globex") and r.json()["authorization_servers"] == [world.b.issuer]
    assert httpx2.get(world.base + "/.well-known/oauth-protected-resource/t/nobody/mcp").status_code == 404
    # a Host the gateway does not serve is refused, never echoed into metadata (DNS rebinding)
    port = world.base.rsplit(":", 1)[1]
    r = httpx2.get(world.base + "/.well-known/oauth-protected-resource", headers={"host": f"evil.example:{port}"})
    assert r.status_code == 421 and "evil" not in r.text


def test_401_names_the_resource_metadata_and_scope(world: World) -> None:
    r = post(world, None)
    assert r.status_code == 401
    value = challenge_of(r)
    assert value.startswith("Bearer ")
    assert f'resource_metadata="{world.base}/.well-known/oauth-protected-resource/mcp"' in value
    assert 'scope="mcp"' in value and "error=" not in value  # no token sent: no error code (RFC 6750 3.1)
    r = post(world, None, "/t/initech/mcp")
    assert f'resource_metadata="{world.base}/.well-known/oauth-protected-resource/t/initech/mcp"' in challenge_of(r)
    r = post(world, "not-a-jwt")
    assert r.status_code == 401 and 'error="invalid_token"' in challenge_of(r)


# -- accepted tokens: claim mapping, evidence, nothing upstream ------------------------------------------
def test_sdk_client_with_a_bearer_jwt_lists_and_calls_tools_as_the_mapped_actor(world: World) -> None:
    async def go() -> None:
        async with mcp_client(world.gw.url, world.acme()) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"files__whoami", "web__seen_headers"} <= names
            assert (await c.call_tool("files__whoami", {})).content[0].text == "files-acme"
        async with mcp_client(world.gw.url, world.globex()) as c:
            assert (await c.call_tool("files__whoami", {})).content[0].text == "files-globex"
        async with mcp_client(world.aud("initech"), world.b.mint(
                {"aud": world.aud("initech"), "org": "initech-org", "sub": "carol", "scope": "mcp"})) as c:
            assert (await c.call_tool("files__whoami", {})).content[0].text == "files-initech"

    run(go())
    acme = aegress_json(world.gw.home, "audit", "query", "-t", "acme", "--tool", "files__whoami")
    assert acme and all(r["actor"] == "alice@acme.example" for r in acme)
    assert all(str(r["record"]["body"].get("token_id", "")).startswith("jwt:") for r in acme
               if r["kind"] == "intent")
    assert {r["actor"] for r in aegress_json(world.gw.home, "audit", "query", "-t", "globex", "--tool",
                                             "files__whoami")} == {"bob"}
    assert {r["actor"] for r in aegress_json(world.gw.home, "audit", "query", "-t", "initech", "--tool",
                                             "files__whoami")} == {"carol"}


def test_the_token_never_reaches_the_upstream_or_the_log(world: World) -> None:
    token = world.acme()

    async def go() -> list[dict[str, str]]:
        async with mcp_client(world.gw.url, token) as c:
            await c.call_tool("web__echo", {"text": "x"})
            return json.loads((await c.call_tool("web__seen_headers", {})).content[0].text)

    seen = run(go())
    assert seen
    for headers in seen:
        assert "authorization" not in {k.lower() for k in headers}
        assert token not in json.dumps(headers)
    assert token not in "".join(world.gw.proc.output)  # the gateway runs with --log-level debug
    r = httpx2.post(world.base + "/mcp?access_token=" + token, headers=MCP_HEADERS, json=INIT)
    assert r.status_code == 400 and r.json()["error"]["data"]["code"] == "credentials-in-query"


def test_binding_claims_still_answer_to_the_token(world: World) -> None:
    r = post(world, world.acme(), headers={"x-aegress-tenant-id": "globex"})
    assert r.status_code == 403 and r.json()["error"]["data"]["code"] == "binding"


# -- every refusal ---------------------------------------------------------------------------------------
def refused(world: World, token: str, path: str = "/mcp", why: str = "") -> str:
    r = post(world, token, path)
    assert r.status_code == 401, (why, r.status_code, r.text)
    assert 'error="invalid_token"' in challenge_of(r), why
    return str(r.json()["error"]["message"])


def test_signature_algorithm_and_header_refusals(world: World) -> None:
    aud, now = world.aud(), int(time.time())
    claims = {"iss": world.a.issuer, "aud": aud, "email": "alice@acme.example", "scope": "mcp", "exp": now + 300}
    assert "algorithm" in refused(world, world.a.forge_unsigned(claims), why="alg none")
    assert "algorithm" in refused(world, world.a.forge_hmac_with_public_key(claims), why="HS256 with the public key")
    stranger = new_key()
    stranger.kid = world.a.signer.kid  # right kid, wrong key: the signature fails
    assert "signature" in refused(world, world.a.mint({"aud": aud, "email": "x@y", "scope": "mcp"}, key=stranger))
    es_key = new_key("ES256")  # an ES256 token claiming the RSA key's kid: the algorithm does not fit the key
    assert "algorithm" in refused(world, world.a.mint({"aud": aud, "email": "x@y", "scope": "mcp"}, key=es_key,
                                                      kid=world.a.signer.kid))
    refused(world, world.acme(kid="no-such-kid"), why="unknown kid")
    refused(world, world.acme(headers={"typ": "dpop+jwt"}), why="not an access token type")
    refused(world, world.acme(headers={"crit": ["exp"]}), why="crit")
    r = httpx2.post(world.base + "/mcp", headers={**MCP_HEADERS, "authorization": "Basic " + world.acme()}, json=INIT)
    assert r.status_code == 401


def test_issuer_audience_and_time_refusals(world: World) -> None:
    assert "not trusted" in refused(world, world.acme(iss="https://evil.example/"), why="wrong issuer")
    assert "signing key is unknown" in refused(world, world.acme(iss=world.b.issuer, org="globex-org"),
                                               why="A's key under B's name")
    assert "signature" in refused(world, world.acme(iss=world.b.issuer, org="globex-org", kid=world.b.signer.kid),
                                  why="A's key under B's name and key id")
    assert "audience" in refused(world, world.acme(aud="https://other.example/mcp"), why="wrong audience")
    assert "audience" in refused(world, world.acme(aud=world.base), why="the origin is not the resource")
    assert "no aud claim" in refused(world, world.acme(aud=None), why="no audience")
    assert "expired" in refused(world, world.acme(exp=int(time.time()) - 120), why="expired")
    assert "not valid yet" in refused(world, world.acme(nbf=int(time.time()) + 600), why="nbf")
    assert "no exp claim" in refused(world, world.acme(exp=None), why="no exp")
    assert "actor" in refused(world, world.acme(email=None), why="no actor claim")
    assert "actor" in refused(world, world.acme(email="not an id!"), why="bad actor id")


def test_a_tenants_idp_can_never_act_in_another_tenant(world: World) -> None:
    # B's token claiming a tenant that does not trust B
    assert "tenant claim" in refused(world, world.globex(org="acme"))
    assert "tenant claim" in refused(world, world.globex(org=None))
    # A's token (acme) on globex's own resource, and B's globex token on initech's
    assert "does not trust" in refused(world, world.acme(aud=world.aud("globex")), "/t/globex/mcp")
    assert "tenant claim" in refused(world, world.globex(aud=world.aud("initech")), "/t/initech/mcp")
    # a token for globex's resource used on the shared one, and the other way round (RFC 8707)
    assert "audience" in refused(world, world.globex(aud=world.aud("globex")))
    assert "audience" in refused(world, world.globex(), "/t/globex/mcp")
    assert post(world, world.globex(aud=world.aud("globex")), "/t/globex/mcp").status_code == 200


def test_missing_scope_is_403_insufficient_scope_naming_it(world: World) -> None:
    for token in (world.acme(scope="read"), world.acme(scope=None), world.globex(scp="other")):
        r = post(world, token)
        assert r.status_code == 403, r.text
        value = challenge_of(r)
        assert 'error="insufficient_scope"' in value and 'scope="mcp"' in value and "resource_metadata=" in value


# -- keys: rotation, refresh at most once per interval ----------------------------------------------------
def test_key_rotation_is_picked_up_and_unknown_kids_do_not_flood_the_idp(world: World) -> None:
    assert post(world, world.acme()).status_code == 200
    time.sleep(3.2)  # past the refresh interval (AEGRESS_OAUTH_JWKS_MIN_REFRESH=3)
    world.a.rotate()
    before = world.a.jwks_fetches
    assert post(world, world.acme()).status_code == 200  # new kid: one refetch
    assert world.a.jwks_fetches == before + 1
    for n in range(25):
        refused(world, world.acme(kid=f"made-up-{n}"))
    assert world.a.jwks_fetches == before + 1  # within the interval: no more fetches
    time.sleep(3.2)
    refused(world, world.acme(kid="made-up-again"))
    assert world.a.jwks_fetches == before + 2  # one per interval


def test_removing_trust_refuses_the_issuer_within_seconds(world: World) -> None:
    token = world.b.mint({"aud": world.aud(), "org": "initech-org", "sub": "carol", "scope": "mcp"})
    assert post(world, token).status_code == 200
    aegress(world.gw.home, "oauth", "issuer", "remove", "-t", "initech", "--issuer", world.b.issuer, "--yes")
    try:
        deadline = time.monotonic() + 10
        while post(world, token).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "tenant claim" in refused(world, token)
    finally:
        aegress(world.gw.home, "oauth", "issuer", "add", "-t", "initech", "--issuer", world.b.issuer,
                "--tenant-claim", "org", "--tenant-value", "initech-org")
