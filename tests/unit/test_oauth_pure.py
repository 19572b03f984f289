"""OAuth mode's pure pieces: public URL and resource URIs, metadata, challenges, algorithm/key fit,
claim mapping (issuer-to-tenant binding), and the JWKS cache's refresh interval (with a fake fetch)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.oauth.claims import alg_fits_key, map_claims, scopes_of
from gateway.oauth.jwks import JwksCache, metadata_urls, parse_jwks
from gateway.oauth.resource import (
    OAuthSettings,
    authorization_server_metadata,
    challenge,
    check_public_url,
    issuers_for,
    protected_resource_metadata,
    scopes_for,
    tenant_of_path,
)
from gateway.store.base import TrustedIssuer

S = OAuthSettings("https://gw.example.com", tenant_paths=True)


def test_public_url_is_an_https_origin_or_loopback_http() -> None:
    assert check_public_url("HTTPS://GW.Example.com/") == "https://gw.example.com"
    assert check_public_url("http://127.0.0.1:8765") == "http://127.0.0.1:8765"
    assert check_public_url("http://[::1]:80") == "http://[::1]:80"
    for bad in ("http://gw.example.com", "https://gw.example.com/base", "https://u:p@gw.example.com",
                "https://gw.example.com/?x=1", "ftp://gw.example.com", "gw.example.com"):
        with pytest.raises(ConfigError):
            check_public_url(bad)


def test_resource_uris_and_paths() -> None:
    assert S.resource() == "https://gw.example.com/mcp"
    assert S.resource("acme") == "https://gw.example.com/t/acme/mcp"
    assert S.metadata_url("acme") == "https://gw.example.com/.well-known/oauth-protected-resource/t/acme/mcp"
    assert tenant_of_path("/mcp") == (True, None) and tenant_of_path("/t/acme/mcp") == (True, "acme")
    for path in ("/t//mcp", "/t/a/b/mcp", "/t/%2e%2e/mcp", "/mcp/", "/t/acme/mcpx"):
        assert tenant_of_path(path)[0] is False, path
    assert S.tenant_of_resource("https://gw.example.com/t/acme/mcp") == (True, "acme")
    assert S.tenant_of_resource("https://gw.example.com/mcp/") == (False, None)
    assert OAuthSettings("https://gw.example.com").tenant_of_resource("https://gw.example.com/t/acme/mcp")[0] is False


def entry(tenant: str, issuer: str = "https://idp", **kw: Any) -> TrustedIssuer:
    return TrustedIssuer(tenant, issuer, **kw)


def test_metadata_lists_the_servers_clients_should_use() -> None:
    trusted = [entry("acme", "https://a"), entry("globex", "https://b", scopes=("api", "mcp"))]
    assert issuers_for(S, trusted, ["acme", "globex"], None) == ["https://a", "https://b"]
    assert issuers_for(S, trusted, ["acme", "globex", "solo"], None) == [S.issuer, "https://a", "https://b"]
    assert issuers_for(S, [], [], None) == [S.issuer]
    assert issuers_for(S, trusted, ["acme", "globex", "solo"], "solo") == [S.issuer]
    assert issuers_for(S, trusted, ["acme", "globex"], "globex") == ["https://b"]
    assert scopes_for(S, trusted, "globex", "https://b") == ["api", "mcp"]
    assert scopes_for(S, trusted, None, S.issuer) == ["mcp"]
    doc = protected_resource_metadata(S, ["https://b"], ["mcp"], "globex")
    assert doc["resource"] == "https://gw.example.com/t/globex/mcp" and doc["bearer_methods_supported"] == ["header"]
    asm = authorization_server_metadata(S)
    assert asm["issuer"] == "https://gw.example.com" and asm["code_challenge_methods_supported"] == ["S256"]
    assert asm["token_endpoint"] == "https://gw.example.com/oauth/token"


def test_challenge_values() -> None:
    assert challenge(S, None, ["mcp"]) == ('Bearer realm="aegress", resource_metadata="https://gw.example.com/'
                                           '.well-known/oauth-protected-resource/mcp", scope="mcp"')
    value = challenge(S, "acme", ["a", "b"], "insufficient_scope", 'say "hi"\\\n')
    assert 'scope="a b"' in value and 'error="insufficient_scope"' in value
    assert 'error_description="say hi"' in value


def test_algorithms_fit_only_their_key_types() -> None:
    rsa = {"kty": "RSA", "n": "x", "e": "AQAB"}
    p256 = {"kty": "EC", "crv": "P-256"}
    assert alg_fits_key("RS256", rsa) and alg_fits_key("PS512", rsa) and alg_fits_key("ES256", p256)
    assert not alg_fits_key("ES384", p256) and not alg_fits_key("ES256", rsa) and not alg_fits_key("RS256", p256)
    for alg in ("none", "HS256", "HS512", "", "rs256"):
        assert not alg_fits_key(alg, rsa) and not alg_fits_key(alg, {"kty": "oct", "k": "c2VjcmV0"})
    assert not alg_fits_key("RS256", {**rsa, "alg": "RS512"}) and alg_fits_key("RS256", {**rsa, "alg": "RS256"})
    assert not alg_fits_key("RS256", {**rsa, "use": "enc"})
    assert alg_fits_key("EdDSA", {"kty": "OKP", "crv": "Ed25519"}) and not alg_fits_key("EdDSA", {"kty": "OKP",
                                                                                                   "crv": "X25519"})


def test_scopes_from_scope_or_scp() -> None:
    assert scopes_of({"scope": "mcp read"}) == {"mcp", "read"}
    assert scopes_of({"scp": "mcp"}) == {"mcp"} and scopes_of({"scp": ["mcp", 3]}) == {"mcp"}
    assert scopes_of({}) == set()


AUD = "https://gw.example.com/mcp"


def test_claim_mapping_binds_issuer_to_tenant() -> None:
    trusted = [entry("acme", "https://a", actor_claim="email"),
               entry("globex", "https://b", tenant_claim="org", tenant_value="g-org"),
               entry("initech", "https://b", tenant_claim="org")]
    base = {"aud": AUD, "scope": "mcp", "sub": "bob"}
    got = map_claims({**base, "iss": "https://a", "email": "al@a"}, trusted, AUD, None)
    assert (got.tenant, got.actor, got.missing_scopes) == ("acme", "al@a", ())
    assert map_claims({**base, "iss": "https://b", "org": "g-org"}, trusted, AUD, None).tenant == "globex"
    assert map_claims({**base, "iss": "https://b", "org": "initech"}, trusted, AUD, None).tenant == "initech"
    # the tenant claim must name a tenant that trusts this issuer
    for org in ("acme", None, 7, "G-ORG"):
        assert "tenant claim" in map_claims({**base, "iss": "https://b", "org": org}, trusted, AUD, None).refusal
    assert "not trusted" in map_claims({**base, "iss": "https://c"}, trusted, AUD, None).refusal
    # on a tenant's own resource, only that tenant's entries
    assert "does not trust" in map_claims({**base, "iss": "https://a", "email": "x"}, trusted, AUD, "globex").refusal
    assert "tenant claim" in map_claims({**base, "iss": "https://b", "org": "g-org"}, trusted, AUD, "initech").refusal
    # audience: the resource asked for, or the entry's own
    assert "audience" in map_claims({**base, "aud": ["x"], "iss": "https://a", "email": "e"}, trusted, AUD,
                                    None).refusal
    custom = [entry("acme", "https://a", audience="api://gw")]
    assert map_claims({**base, "aud": ["api://gw", "y"], "iss": "https://a"}, custom, AUD, None).tenant == "acme"
    assert "audience" in map_claims({**base, "iss": "https://a"}, custom, AUD, None).refusal


def test_claim_mapping_never_guesses_between_tenants() -> None:
    twins = [entry("acme", "https://shared"), entry("globex", "https://shared")]
    got = map_claims({"iss": "https://shared", "aud": AUD, "sub": "x", "scope": "mcp"}, twins, AUD, None)
    assert got.entry is None and "more than one tenant" in got.refusal
    # per-tenant resources separate them: each entry's default audience is the resource asked for
    per = map_claims({"iss": "https://shared", "aud": "https://gw.example.com/t/globex/mcp", "sub": "x",
                      "scope": "mcp"}, twins, "https://gw.example.com/t/globex/mcp", "globex")
    assert per.tenant == "globex"


def test_claim_mapping_actor_and_scopes() -> None:
    trusted = [entry("acme", "https://a", scopes=("mcp", "tools"))]
    base = {"iss": "https://a", "aud": AUD}
    assert "'sub' claim" in map_claims(base, trusted, AUD, None).refusal
    assert "'sub' claim" in map_claims({**base, "sub": "auth0|123"}, trusted, AUD, None).refusal
    got = map_claims({**base, "sub": "u1", "scope": "mcp"}, trusted, AUD, None)
    assert got.missing_scopes == ("tools",) and got.tenant == "acme"


def test_jwks_parsing_and_discovery_urls() -> None:
    keys = parse_jwks({"keys": [{"kid": "a", "kty": "RSA"}, {"kty": "EC"}, {"kid": "e", "use": "enc"}, "x"]})
    assert set(keys) == {"a", ""}
    assert metadata_urls("https://kc/realms/acme") == ["https://kc/realms/acme/.well-known/openid-configuration",
                                                       "https://kc/.well-known/oauth-authorization-server/realms/acme"]
    assert metadata_urls("https://idp/")[0] == "https://idp/.well-known/openid-configuration"


def test_jwks_refresh_is_rate_limited_and_single_flight() -> None:
    now = [1000.0]
    served: dict[str, Any] = {"keys": [{"kid": "k1", "kty": "RSA"}]}
    fetched: list[str] = []

    async def fetch(url: str) -> Any:
        fetched.append(url)
        await asyncio.sleep(0.01)
        if url.endswith("openid-configuration"):
            return {"issuer": "https://idp", "jwks_uri": "https://idp/jwks"}
        return served

    async def go() -> None:
        cache = JwksCache(min_refresh_s=30, max_age_s=3600, fetch=fetch, clock=lambda: now[0])
        found = await asyncio.gather(*(cache.key("https://idp", "", "k1") for _ in range(10)))
        assert all(f == {"kid": "k1", "kty": "RSA"} for f in found)
        assert fetched == ["https://idp/.well-known/openid-configuration", "https://idp/jwks"]  # one flight
        for n in range(20):
            assert await cache.key("https://idp", "", f"nope{n}") is None
        assert len(fetched) == 2  # unknown kids within the interval: no fetch
        served["keys"].append({"kid": "k2", "kty": "RSA"})
        now[0] += 31
        assert await cache.key("https://idp", "", "k2") is not None  # rotation picked up after the interval
        assert cache.fetches == 2
        now[0] += 3600
        assert await cache.key("https://idp", "", "k1") is not None and cache.fetches == 3  # stale: refreshed

    asyncio.run(go())


def test_jwks_failed_refresh_keeps_the_keys_held() -> None:
    now = [0.0]
    fail = [False]

    async def fetch(url: str) -> Any:
        if fail[0]:
            from gateway.oauth.fetch import FetchError

            raise FetchError("down")
        return {"keys": [{"kid": "k1", "kty": "RSA"}]}

    async def go() -> None:
        cache = JwksCache(min_refresh_s=1, max_age_s=10, fetch=fetch, clock=lambda: now[0])
        assert await cache.key("https://idp", "https://idp/jwks", "k1") is not None
        fail[0] = True
        now[0] += 20
        assert await cache.key("https://idp", "https://idp/jwks", "k1") is not None

    asyncio.run(go())


# -- the embedded authorization server's pure pieces --------------------------------------------------------
def test_redirect_uri_rules() -> None:
    from gateway.oauth.server import check_redirect_uri

    for good in ("https://app.example/cb", "http://127.0.0.1:33418/callback", "http://localhost/cb",
                 "http://[::1]:9/cb", "cursor://anysphere.cursor-retrieval/oauth/callback", "com.example.app:/cb"):
        assert check_redirect_uri(good) is None, good
    for bad in ("http://app.example/cb", "javascript:alert(1)", "data:text/html,x", "file:///etc/passwd",
                "https://app.example/cb#x", "https://u:p@app.example/cb", "/relative", "", "https:///nohost",
                "https://app.example/ cb", "http://127.0.0.1.evil.example/cb"):
        assert check_redirect_uri(bad) is not None, bad


def test_pkce_s256() -> None:
    import base64
    import hashlib

    from gateway.oauth.server import pkce_ok

    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert pkce_ok(verifier, challenge) and not pkce_ok("w" * 50, challenge) and not pkce_ok(verifier, verifier)


def test_signed_values_and_csrf() -> None:
    from gateway.oauth.signed import csrf_ok, csrf_token, sign, unsign

    key, other = b"k" * 32, b"o" * 32
    value = sign(key, "session", {"t": "acme"}, 1000.0, 60)
    assert unsign(key, "session", value, 1010.0) == {"t": "acme", "exp": 1060}
    assert unsign(key, "session", value, 1060.0) is None  # expired
    assert unsign(key, "authorize", value, 1010.0) is None  # another purpose
    assert unsign(other, "session", value, 1010.0) is None
    body, mac = value.split(".")
    assert unsign(key, "session", body + "x." + mac, 1010.0) is None
    for junk in (None, "", "a.b.c", "!!.??", "x" * 10_000):
        assert unsign(key, "session", junk, 1010.0) is None
    token = csrf_token(key, "cookie-value")
    assert csrf_ok(key, "cookie-value", token) and not csrf_ok(key, "other", token)
    assert not csrf_ok(key, None, token) and not csrf_ok(key, "cookie-value", None)


def test_passwords() -> None:
    from gateway.errors import InvalidInput
    from gateway.oauth.passwords import hash_password, verify_password

    stored = hash_password("correct horse battery")
    assert stored.startswith("scrypt$") and "correct" not in stored
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse batterz", stored) and not verify_password("x", None)
    assert not verify_password("x", "scrypt$99999999$8$1$AA==$AA==")  # refuses absurd work factors
    with pytest.raises(InvalidInput):
        hash_password("short")


def test_pages_escape_everything() -> None:
    from gateway.oauth import pages

    evil = "<script>alert('x')</script>\"'"
    html = pages.consent(client_name=evil, client_id=evil, redirect_uri="https://a.example/cb?x=" + evil,
                         resource=evil, tenant=evil, actor=evil, scope=evil, request=evil, csrf=evil)
    assert "<script>" not in html and "alert('x')" not in html
    html = pages.sign_in(client_name=evil, client_id=evil, redirect_uri=evil, resource=evil, tenant=None,
                         request=evil, csrf=evil, error=evil, actor=evil, tenant_value=evil)
    assert "<script>" not in html and "value='&lt;script&gt;" in html
