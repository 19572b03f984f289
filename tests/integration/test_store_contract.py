"""The store contract, on every store (SQLite and the machine's real Postgres): the same calls give the
same answers. Evidence, recovery and checkpoints: test_audit_store.py; the policy gate's state:
test_gate_store.py."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import replace

import pytest

from gateway import admin
from gateway.audit.log import Columns, Entry, tenant_origin
from gateway.audit.verify import verify_log
from gateway.errors import AlreadyExists, NotFound, StoreUnavailable
from gateway.evidence.origins import origin_prefix
from gateway.store.base import EvidenceFilter, Store, WouldBlock
from gateway.store.migrations import MIGRATIONS
from gateway.types import CallRecord, TokenInfo, UpstreamLimits, UpstreamSpec

T0 = "2026-01-01T00:00:00.000000Z"
T1 = "2026-01-02T00:00:00.000000Z"


def test_every_store_implements_the_whole_interface(store: Store) -> None:
    wanted = {name for name, _ in inspect.getmembers(Store, inspect.isfunction) if not name.startswith("_")}
    # the store's own class or its shared SQL layer (gateway.store.sql), never the Protocol's defaults
    defined = {name for cls in type(store).__mro__ if cls is not object for name in vars(cls)}
    missing = {name for name in wanted if name not in defined}
    assert missing <= {"find_token_nowait"}  # the one method with a default in the interface
    assert isinstance(store.replica_id, str) and isinstance(store.exclusive, bool)


def test_tenants_and_actors(store: Store) -> None:
    store.create_tenant("acme", T0)
    store.create_tenant("beta", T0)
    assert [t.id for t in store.list_tenants()] == ["acme", "beta"]
    with pytest.raises(AlreadyExists):
        store.create_tenant("acme", T1)
    with pytest.raises(AlreadyExists, match="only by case"):
        store.create_tenant("ACME", T1)
    store.add_actor("acme", "alice", T0)
    store.add_actor("acme", "Bob", T0)
    with pytest.raises(AlreadyExists, match="only by case"):
        store.add_actor("acme", "ALICE", T1)
    with pytest.raises(NotFound):
        store.add_actor("nope", "alice", T1)
    assert [a.id for a in store.list_actors("acme")] == ["Bob", "alice"]  # byte order, as SQLite sorts
    assert store.get_actor("acme", "alice") is not None and store.get_actor("acme", "ALICE") is None
    store.remove_actor("acme", "Bob")
    with pytest.raises(NotFound):
        store.remove_actor("acme", "Bob")
    store.delete_tenant("beta")
    with pytest.raises(NotFound):
        store.delete_tenant("beta")
    assert store.get_tenant("beta") is None and store.get_tenant("acme") is not None


def test_tokens(store: Store) -> None:
    store.create_tenant("acme", T0)
    store.add_actor("acme", "alice", T0)
    store.add_token(TokenInfo("tok_1", "acme", "alice", T0, None, "cli"), "h1")
    store.add_token(TokenInfo("tok_2", "acme", "alice", T1, None, ""), "h2")
    assert store.find_token("h1") == TokenInfo("tok_1", "acme", "alice", T0, None, "cli")
    assert store.find_token("missing") is None
    assert [t.id for t in store.list_tokens("acme", "alice")] == ["tok_1", "tok_2"]
    assert store.list_tokens("other") == []
    revoked = store.revoke_token("tok_1", T1)
    assert revoked.revoked_at == T1 and not revoked.active
    assert store.revoke_token("tok_1", "later").revoked_at == T1  # revoking twice keeps the first time
    with pytest.raises(NotFound):
        store.revoke_token("tok_9", T1)
    try:
        nowait = store.find_token_nowait("h2")
    except WouldBlock:  # Postgres: every lookup is a round trip, so it always goes to a thread
        nowait = store.find_token("h2")
    assert nowait is not None and nowait.id == "tok_2"
    # the gateway's batched re-check of what open sessions hold: revoked and unknown ids are not active
    assert store.active_tokens(["tok_1", "tok_2", "tok_9", "tok_2"]) == {"tok_2"}
    assert store.active_tokens([]) == set()
    many = [f"tok_x{i}" for i in range(1200)] + ["tok_2"]  # more than one batch of ids
    assert store.active_tokens(many) == {"tok_2"}
    store.remove_actor("acme", "alice")  # an actor's tokens go with it
    assert store.find_token("h2") is None
    assert store.active_tokens(["tok_2"]) == set()


def test_upstreams(store: Store) -> None:
    store.create_tenant("acme", T0)
    spec = UpstreamSpec("acme", "files", "stdio", command=("python", "-m", "x"), env={"K": "env:K"},
                        created_at=T0, limits=UpstreamLimits(call_timeout_s=7.0))
    before = store.upstreams_version()
    store.add_upstream(spec)
    assert store.get_upstream("acme", "files") == spec
    assert store.upstreams_version() == before + 1
    with pytest.raises(AlreadyExists):
        store.add_upstream(spec)
    with pytest.raises(NotFound):
        store.add_upstream(replace(spec, tenant_id="nope"))
    web = UpstreamSpec("acme", "web", "http", url="https://example.test/mcp", headers={"A": "keyring:a"},
                       prefix=False, created_at=T1)
    store.add_upstream(web)
    assert [u.name for u in store.list_upstreams("acme")] == ["files", "web"]
    store.update_upstream(replace(web, allow_private=True))
    assert store.get_upstream("acme", "web").allow_private  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        store.update_upstream(replace(web, name="gone"))
    store.set_upstream_tools("acme", "web", ["b", "a"])
    assert store.get_upstream_tools("acme") == {"files": [], "web": ["a", "b"]}
    store.remove_upstream("acme", "web")
    with pytest.raises(NotFound):
        store.remove_upstream("acme", "web")
    assert store.upstreams_version() == before + 4


def test_sealed_changes_commit_with_their_records_or_not_at_all(store: Store) -> None:
    admin.create_tenant(store, "acme", T0, by="ops")
    admin.add_actor(store, "acme", "alice", T0, by="ops")
    origin = tenant_origin(origin_prefix(store), "acme")
    size = store.evidence_size(origin)
    assert size >= 2
    bad = Entry(origin, "token_revoked", T0, {"nonsense": True}, Columns(tenant="acme"))
    with pytest.raises(Exception), store.sealed() as entries:  # noqa: B017 - a record that cannot be sealed
        store.add_actor("acme", "bob", T0)
        entries.append(bad)
    assert store.get_actor("acme", "bob") is None and store.evidence_size(origin) == size
    with pytest.raises(NotFound), store.sealed():  # the change fails: nothing sealed either
        store.remove_actor("acme", "nobody")
    with store.sealed() as entries:  # nested writes inside one sealed change see each other
        store.add_actor("acme", "carol", T0)
        assert store.get_actor("acme", "carol") is not None
        entries.append(Entry(origin, "operator_change", T0, {"change": "actor_added", "actor": "ops",
                                                             "subject": "carol"}, Columns(tenant="acme")))
    assert store.get_actor("acme", "carol") is not None and store.evidence_size(origin) == size + 1
    assert verify_log(store.evidence_records(origin), origin=origin).ok


def test_calls_copies_are_written_with_their_records(store: Store) -> None:
    origin = tenant_origin("aegress.test", "acme")
    call = CallRecord("acme", "alice", "tok_1", "tools/call", "echo", "up", "allow", "r1", "ok", T0, 1.5, None,
                      "s1", "client")
    body = {"token_id": "tok_1", "actor": "op"}
    store.append_evidence([Entry(origin, "token_revoked", T0, body, Columns(tenant="acme"), call=call)])
    assert store.list_calls("acme") == [call]
    assert store.list_calls("other") == [] and store.list_calls() == [call]


def test_query_filters_and_lookups(store: Store) -> None:
    a, b = tenant_origin("aegress.test", "acme"), tenant_origin("aegress.test", "beta")
    entries = [
        Entry(a, "token_revoked", T0, {"token_id": "tok_a", "actor": "op"}, Columns(tenant="acme", actor="op")),
        Entry(b, "token_revoked", T1, {"token_id": "tok_b", "actor": "ed"}, Columns(tenant="beta", actor="ed")),
        Entry(a, "token_revoked", T1, {"token_id": "tok_c", "actor": "op"}, Columns(tenant="acme", actor="op")),
    ]
    sealed = store.append_evidence(entries)
    assert [s.record.seq for s in sealed] == [0, 0, 1]
    assert store.evidence_origins() == sorted([a, b])
    rows = store.query_evidence(EvidenceFilter())
    assert [r.seq for r in rows] == [1, 0, 0] and rows[0].origin == a  # newest first
    assert [r.tenant for r in store.query_evidence(EvidenceFilter(tenant="beta"))] == ["beta"]
    assert len(store.query_evidence(EvidenceFilter(actor="op", since=T1))) == 1
    assert len(store.query_evidence(EvidenceFilter(until=T1))) == 1
    assert [r.seq for r in store.query_evidence(EvidenceFilter(origin=a), newest_first=False)] == [0, 1]
    only = store.query_evidence(EvidenceFilter(contains="tok_c"))
    assert len(only) == 1 and only[0].data == sealed[2].record.canonical  # the exact hashed bytes
    first = rows[-1]
    assert store.query_evidence(EvidenceFilter(after_id=first.id), limit=1, newest_first=False)[0].id > first.id
    assert store.get_evidence(only[0].id) == only[0] == store.get_evidence_at(a, 1)
    assert store.get_evidence(10**9) is None and store.get_evidence_at(a, 7) is None
    assert store.evidence_records(a, 1) == [(1, sealed[2].record.canonical)]
    assert store.evidence_records(a, 0, 1) == [(0, sealed[0].record.canonical)]
    assert store.evidence_leaf_hashes(a) == [sealed[0].record.leaf_hash, sealed[2].record.leaf_hash]


def test_checkpoints_prefix_and_probe(store: Store) -> None:
    assert store.evidence_prefix("aegress.local/d-1") == "aegress.local/d-1"
    assert store.evidence_prefix("aegress.local/d-2") == "aegress.local/d-1"  # fixed once chosen
    store.add_checkpoint("o", 3, b"r" * 32, "note-3", T0)
    store.add_checkpoint("o", 3, b"x" * 32, "other", T1)  # one checkpoint per size: the first stays
    store.add_checkpoint("o", 1, b"r" * 32, "note-1", T0)
    assert store.list_checkpoints("o") == [(1, "note-1"), (3, "note-3")]
    store.probe_write(T0)
    store.ping()


def test_ended_sessions_are_seen_by_every_store_of_the_database_and_pruned(store: Store,
                                                                           make_store: Callable[..., Store]) -> None:
    other = make_store(replica_id="r-other")  # another replica of the same database
    store.end_session("d1", 1000.0)
    store.end_session("d1", 2000.0)  # ending twice keeps the first time
    store.end_session("d2", 3000.0)
    assert other.ended_sessions(["d1", "d2", "d3", "d1"]) == {"d1", "d2"}
    assert other.ended_sessions([]) == set()
    many = [f"x{i}" for i in range(1200)]  # more than one batch per statement
    for d in many[::400]:
        other.end_session(d, 3000.0)
    assert store.ended_sessions([*many, "d2"]) == {*many[::400], "d2"}
    assert store.prune_ended_sessions(1500.0) == 1  # d1 (ended at 1000) only
    assert other.ended_sessions(["d1", "d2"]) == {"d2"}


def test_the_first_shared_value_wins_for_every_replica(store: Store, make_store: Callable[..., Store]) -> None:
    assert store.shared_value("session_key", "first") == "first"
    assert make_store(replica_id="r-other").shared_value("session_key", "second") == "first"


def test_schema_is_at_the_latest_migration_and_migrating_again_does_nothing(store: Store,
                                                                            make_store: Callable[..., Store]
                                                                            ) -> None:
    status = store.schema_status()
    assert status.version == status.latest == len(MIGRATIONS) and status.pending == ()
    assert [v for v, _, _ in status.applied] == [m.version for m in MIGRATIONS]
    assert store.migrate() == []
    assert make_store(migrate=False).schema_status().version == len(MIGRATIONS)


def test_a_fresh_database_is_migrated_once_by_many_processes_at_once(store_url: str,
                                                                     make_store: Callable[..., Store]) -> None:
    import threading

    fresh = make_store(migrate=False)
    assert fresh.schema_status().version == 0
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)
    stores = [make_store(migrate=False) for _ in range(4)]

    def migrate(s: Store) -> None:
        barrier.wait()
        try:
            s.migrate()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and fresh.schema_status().version == len(MIGRATIONS)
    fresh.create_tenant("acme", T0)  # and the schema works


def test_an_unreachable_postgres_is_a_clear_error_without_the_password() -> None:
    from pathlib import Path

    from gateway.store import open_store

    url = "postgresql://aegress:s3cret-pw@127.0.0.1:1/nothing?connect_timeout=1"
    with pytest.raises(StoreUnavailable) as info:
        open_store(Path("/nonexistent"), url)
    assert "s3cret-pw" not in info.value.message and "s3cret-pw" not in (info.value.hint or "")
    assert "postgresql://aegress:***@127.0.0.1:1/nothing" in info.value.message


def test_reads_survive_a_connection_the_server_ended(store_url: str, store: Store) -> None:
    """Postgres: an operator (or a failover) ends the pool's connections; the next read reconnects."""
    if store.exclusive:
        pytest.skip("SQLite has no server connection to lose")
    from tests.pg import sql

    store.create_tenant("acme", T0)
    ended = sql(store_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname ="
                           " current_database() AND pid <> pg_backend_pid() AND application_name = 'aegress r-test'")
    assert ended and all(ok for (ok,) in ended)
    assert store.get_tenant("acme") is not None
    assert [t.id for t in store.list_tenants()] == ["acme"]
