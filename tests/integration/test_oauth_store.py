"""OAuth mode's stored state on every store (SQLite and the machine's Postgres): trust entries, clients,
grants, and single use of codes, refresh tokens and login links, also when several stores ("replicas")
race for the same one."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from gateway.errors import AlreadyExists, NotFound
from gateway.store.base import OAuthClient, OAuthCode, OAuthGrant, Store, TrustedIssuer

T0 = "2026-01-01T00:00:00+00:00"
NOW = 1_800_000_000.0


def seed(store: Store) -> None:
    store.create_tenant("acme", T0)
    store.add_actor("acme", "alice", T0)
    store.add_oauth_client(OAuthClient("cl_1", "Claude", ("http://127.0.0.1:5000/cb",), "none", "registered", T0))
    store.add_oauth_grant(OAuthGrant("grt_1", "acme", "alice", "cl_1", "https://gw/mcp", "mcp", T0))


def test_trusted_issuers(store: Store) -> None:
    store.create_tenant("acme", T0)
    before = store.oauth_version()
    entry = TrustedIssuer("acme", "https://idp", "https://gw/mcp", "org", "o1", "email", ("mcp", "x"), "", True, T0)
    store.add_trusted_issuer(entry)
    assert store.list_trusted_issuers() == [entry] and store.list_trusted_issuers("other") == []
    assert store.oauth_version() == before + 1
    with pytest.raises(AlreadyExists):
        store.add_trusted_issuer(entry)
    with pytest.raises(NotFound):
        store.add_trusted_issuer(TrustedIssuer("nope", "https://idp"))
    store.remove_trusted_issuer("acme", "https://idp")
    with pytest.raises(NotFound):
        store.remove_trusted_issuer("acme", "https://idp")
    store.add_trusted_issuer(entry)
    store.delete_tenant("acme")  # a tenant created again under the same id trusts nothing
    store.create_tenant("acme", T0)
    assert store.list_trusted_issuers() == []


def test_clients_and_grants(store: Store) -> None:
    seed(store)
    assert store.get_oauth_client("cl_1").redirect_uris == ("http://127.0.0.1:5000/cb",)  # type: ignore[union-attr]
    doc = OAuthClient("https://app.example/client.json", "App", ("https://app.example/cb",), "none",
                      "metadata-document", T0)
    store.add_oauth_client(doc)
    store.add_oauth_client(doc)  # a metadata-document client seen again keeps its row
    assert [c.id for c in store.list_oauth_clients()] == ["cl_1", "https://app.example/client.json"]
    assert store.active_grant("grt_1") is not None
    assert [g.id for g in store.list_oauth_grants("acme")] == ["grt_1"] and store.list_oauth_grants("x") == []
    assert store.revoke_oauth_grant("grt_1", T0, "operator") is True
    assert store.revoke_oauth_grant("grt_1", T0, "operator") is False
    assert store.active_grant("grt_1") is None and store.get_oauth_grant("grt_1").revoked_reason == "operator"  # type: ignore[union-attr]
    store.add_oauth_grant(OAuthGrant("grt_2", "acme", "alice", "cl_1", "https://gw/mcp", "mcp", T0))
    revoked = store.revoke_oauth_client("cl_1", T0)
    assert not revoked.active and store.active_grant("grt_2") is None
    assert store.get_oauth_grant("grt_2").revoked_reason == "client revoked"  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        store.revoke_oauth_client("cl_none", T0)


def test_a_removed_actor_ends_its_grants(store: Store) -> None:
    seed(store)
    store.set_actor_password("acme", "alice", "scrypt$x", T0)
    store.remove_actor("acme", "alice")
    assert store.active_grant("grt_1") is None and store.get_actor_password("acme", "alice") is None
    with pytest.raises(NotFound):
        store.set_actor_password("acme", "alice", "scrypt$x", T0)


def test_codes_are_single_use_and_expire(store: Store) -> None:
    seed(store)
    code = OAuthCode("grt_1", "cl_1", "http://127.0.0.1:5000/cb", "chal", "https://gw/mcp", "mcp", NOW + 60)
    store.add_oauth_code("h1", code)
    status, got = store.consume_oauth_code("h1", NOW)
    assert status == "ok" and got is not None and got.code_challenge == "chal"
    assert store.consume_oauth_code("h1", NOW + 1)[0] == "used"
    store.add_oauth_code("h2", code)
    assert store.consume_oauth_code("h2", NOW + 61)[0] == "expired"
    assert store.consume_oauth_code("nope", NOW) == ("unknown", None)


def test_refresh_rotation_and_reuse_revokes_the_grant(store: Store) -> None:
    seed(store)
    store.add_refresh_token("r1", "grt_1", "cl_1", NOW, NOW + 3600)
    assert store.rotate_refresh_token("r1", "r2", NOW + 1, NOW + 7200) == ("ok", "grt_1")
    assert store.rotate_refresh_token("r2", "r3", NOW + 2, NOW + 7200) == ("ok", "grt_1")
    assert store.active_grant("grt_1") is not None
    assert store.rotate_refresh_token("r1", "r4", NOW + 3, NOW + 7200) == ("reused", "grt_1")
    assert store.active_grant("grt_1") is None
    assert store.get_oauth_grant("grt_1").revoked_reason == "refresh token reused"  # type: ignore[union-attr]
    assert store.rotate_refresh_token("r3", "r5", NOW + 4, NOW + 7200) == ("revoked", "grt_1")
    assert store.rotate_refresh_token("none", "r6", NOW, NOW + 1) == ("unknown", None)
    store.add_oauth_grant(OAuthGrant("grt_9", "acme", "alice", "cl_1", "https://gw/mcp", "mcp", T0))
    store.add_refresh_token("old", "grt_9", "cl_1", NOW, NOW + 10)
    assert store.rotate_refresh_token("old", "new", NOW + 11, NOW + 99) == ("expired", "grt_9")


def test_login_links_are_single_use(store: Store) -> None:
    seed(store)
    store.add_login_link("l1", "acme", "alice", NOW, NOW + 900)
    assert store.consume_login_link("l1", NOW + 1) == ("acme", "alice")
    assert store.consume_login_link("l1", NOW + 2) is None
    store.add_login_link("l2", "acme", "alice", NOW, NOW + 900)
    assert store.consume_login_link("l2", NOW + 901) is None


def test_single_use_holds_across_replicas(make_store: Callable[..., Store]) -> None:
    """Eight stores (as eight replicas would open them) race to spend one code, one refresh token and one
    login link: exactly one wins each; the losers see a replay."""
    first = make_store()
    seed(first)
    first.add_oauth_code("c", OAuthCode("grt_1", "cl_1", "u", "x", "r", "mcp", NOW + 60))
    first.add_refresh_token("r", "grt_1", "cl_1", NOW, NOW + 60)
    first.add_login_link("l", "acme", "alice", NOW, NOW + 60)
    replicas = [make_store(replica_id=f"r{n}") for n in range(8)]
    results: dict[str, list[object]] = {"code": [], "refresh": [], "link": []}
    barrier = threading.Barrier(len(replicas))

    def race(n: int, store: Store) -> None:
        barrier.wait(10)
        results["code"].append(store.consume_oauth_code("c", NOW)[0])
        results["refresh"].append(store.rotate_refresh_token("r", f"r-next-{n}", NOW, NOW + 60)[0])
        results["link"].append(store.consume_login_link("l", NOW))

    threads = [threading.Thread(target=race, args=(n, s)) for n, s in enumerate(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results["code"]) == ["ok"] + ["used"] * 7  # type: ignore[type-var]
    assert results["refresh"].count("ok") == 1 and results["refresh"].count("reused") == 7
    assert results["link"].count(("acme", "alice")) == 1 and results["link"].count(None) == 7
    assert first.active_grant("grt_1") is None  # the reuse revoked the grant
