"""Several real gateway replicas on one Postgres database, with Redis signals and shared limits: what an
operator does with `aegress` on any machine is in force on every replica within a second, a revoked
token's open streams end everywhere, a held call is released by an approval made anywhere, and one rate
limit bucket serves the whole fleet. Without Redis (or with Redis stopped) the same changes arrive by
polling within their documented bounds, limits become per-replica shares, and nothing fails open.

Measured times are printed (run with -s to see them)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.e2e.replicas_support import (
    Fleet,
    GetStream,
    blocked,
    call,
    first_time,
    fleet,
    in_background,
    list_tools,
    open_session,
    rate_limited,
    text_of,
    wait_output,
)
from tests.procs import run_http_upstream
from tests.redisproc import REDIS_URL, private_redis, reachable

pytestmark = pytest.mark.slow

ALLOW = 'version = 1\ndefault = "allow"\n\n[builtin]\ndestructive = "off"\n'
BLOCK_ECHO = ALLOW + '\n[[rules]]\nid = "no-echo"\nname = "echo"\nverdict = "block"\n'
REVIEW_ECHO = ALLOW + ('\n[review]\nhold_timeout_seconds = 60\n\n'
                       '[[rules]]\nid = "hold-echo"\nname = "echo"\nverdict = "review"\n')


def rate(calls: int, *actors: str) -> str:
    lines = "".join(f"{a} = {{ calls = {calls}, per_seconds = 600 }}\n" for a in actors)
    return ALLOW + f"\n[rate_limits.actors]\n{lines}"


def report(what: str, seconds: list[float]) -> None:
    print(f"\n[measured] {what}: " + ", ".join(f"{s * 1000:.0f} ms" for s in seconds))


@pytest.fixture(scope="module")
def redis_fleet(tmp_path_factory: pytest.TempPathFactory, pg_database: Any) -> Iterator[Fleet]:
    why = reachable()
    if why is not None:
        pytest.fail(f"{why} (the Redis tests need the machine's server at AEGRESS_TEST_REDIS_URL)")
    with fleet(tmp_path_factory.mktemp("fleet"), pg_database.schema_url(), 3, redis_url=REDIS_URL) as f:
        for r in f.replicas:
            wait_output(r.proc, "Redis: redis://127.0.0.1:")  # serve says which Redis it uses
        yield f


def warm(f: Fleet, token: str, tool: str = "tools__echo") -> None:
    """A first call on every replica (starts its upstream process), so later timings measure signals only."""
    for r in f.replicas:
        status, msg = call(r.url, token, tool, {"text": "warm"}, timeout=60)
        assert status == 200 and "result" in msg, msg


def test_a_policy_applied_by_the_cli_is_in_force_on_every_replica_within_a_second(redis_fleet: Fleet,
                                                                                   tmp_path: Path) -> None:
    f = redis_fleet
    token = f.tenant("prop", policy=ALLOW)["alice"]
    warm(f, token)
    # every replica keeps calling, so its own poll (every 1 s while signals arrive) is as fresh as it gets
    probes = [first_time(lambda http, u=r.url: blocked(call(u, token, "tools__echo", {"text": "x"}, http=http)[1]))
              for r in f.replicas]
    time.sleep(1.2)
    assert not any("at" in p for p in probes)  # still allowed everywhere
    (tmp_path / "block.toml").write_text(BLOCK_ECHO)
    f.cli("policy", "apply", str(tmp_path / "block.toml"), "--tenant", "prop", "--yes", i=1)
    for p in probes:
        p["thread"].join(15)
    done = f.changed_at("prop", "policy_changed")
    took = [p["at"] - done for p in probes]
    report("policy apply (commit) -> in force on each replica", took)
    assert max(took) < 1.0


def test_an_upstream_registered_by_the_cli_is_visible_on_every_replica_within_a_second(redis_fleet: Fleet) -> None:
    f = redis_fleet
    token = f.tenant("ups", policy=ALLOW, fixture=False)["alice"]
    with run_http_upstream("first") as (first_url, _), run_http_upstream("second") as (second_url, _):
        f.cli("upstream", "add", "--tenant", "ups", "first", "--url", first_url, "--allow-private")
        for r in f.replicas:  # each replica has loaded the tenant (and polled its upstreams) once
            end = time.monotonic() + 10
            while "first__echo" not in list_tools(r.url, token):
                assert time.monotonic() < end
                time.sleep(0.1)
        probes = [first_time(lambda http, u=r.url: "second__echo" in list_tools(u, token, http)) for r in f.replicas]
        f.cli("upstream", "add", "--tenant", "ups", "second", "--url", second_url, "--allow-private", i=2)
        for p in probes:
            p["thread"].join(15)
    done = f.changed_at("ups", "operator_change")  # the latest: upstream_added of `second`
    took = [p["at"] - done for p in probes]
    report("upstream add (commit) -> listed by each replica", took)
    assert max(took) < 1.0


def test_a_revocation_ends_open_streams_and_held_calls_on_other_replicas_within_a_second(
        redis_fleet: Fleet, tmp_path: Path) -> None:
    f = redis_fleet
    tokens = f.tenant("rev", ("bob", "carol"), policy=REVIEW_ECHO)
    token = tokens["bob"]
    warm(f, tokens["carol"], "tools__whoami")
    headers = open_session(f.replicas[1].url, token)
    stream = GetStream(f.replicas[1].url, headers)
    held_thread, held = in_background(lambda: call(f.replicas[2].url, token, "tools__echo", {"text": "x"},
                                                   timeout=60))
    end = time.monotonic() + 20
    while not f.store.list_held_calls("rev", "pending"):  # the call is held on replica 2
        assert time.monotonic() < end
        time.sleep(0.05)
    token_id = next(t.id for t in f.store.list_tokens("rev", "bob"))
    f.cli("token", "revoke", token_id, "--yes", i=0)
    ended = stream.join(10)
    held_thread.join(10)
    done = f.changed_at("rev", "token_revoked")
    took = [ended - done, held["at"] - done]
    report("token revoke (commit) -> GET stream on replica 1 ended, held call on replica 2 ended", took)
    assert max(took) < 1.0
    _, msg = held["value"]
    assert msg["error"]["code"] == -32001 and "revoked" in msg["error"]["message"]
    # and the next request anywhere is refused, while another actor's token still works
    assert call(f.replicas[0].url, token, "tools__whoami")[0] == 401
    assert call(f.replicas[1].url, tokens["carol"], "tools__whoami")[0] == 200


def test_a_review_held_on_one_replica_is_released_at_once_by_review_approve(redis_fleet: Fleet) -> None:
    f = redis_fleet
    token = f.tenant("hold", policy=REVIEW_ECHO)["alice"]
    warm(f, token, "tools__whoami")
    thread, out = in_background(lambda: call(f.replicas[0].url, token, "tools__echo", {"text": "released"},
                                             timeout=60))
    end = time.monotonic() + 20
    while not (pending := f.store.list_held_calls("hold", "pending")):
        assert time.monotonic() < end
        time.sleep(0.05)
    time.sleep(1.5)  # the held call has read the store and waits (polling every 1 s while signals arrive)
    f.cli("review", "approve", pending[0].id, "--as", "ops", i=2)
    thread.join(10)
    took = out["at"] - f.changed_at("hold", "review_approved")
    report("review approve (commit, from replica 2's data dir) -> held call on replica 0 answered", [took])
    assert took < 1.0
    status, msg = out["value"]
    assert status == 200 and text_of(msg) == "released"


def test_one_rate_limit_bucket_serves_the_whole_fleet(redis_fleet: Fleet) -> None:
    f = redis_fleet
    token = f.tenant("rate", policy=rate(5, "alice"))["alice"]
    verdicts = []
    with httpx2.Client(timeout=60) as http:
        for i in range(12):
            status, msg = call(f.replicas[i % 3].url, token, "tools__echo", {"text": f"n{i}"}, http=http)
            assert status == 200
            verdicts.append("limited" if rate_limited(msg) else text_of(msg))
    assert verdicts[:5] == [f"n{i}" for i in range(5)]
    assert verdicts[5:] == ["limited"] * 7  # 5 per 600 s, whichever replica answers


def test_without_redis_a_revocation_ends_open_streams_within_the_polling_bound(tmp_path: Path,
                                                                               pg_database: Any) -> None:
    with fleet(tmp_path, pg_database.schema_url(), 2) as f:
        token = f.tenant("solo", fixture=False)["alice"]
        stream = GetStream(f.replicas[1].url, open_session(f.replicas[1].url, token))
        token_id = f.store.list_tokens("solo", "alice")[0].id
        f.cli("token", "revoke", token_id, "--yes", i=0)
        took = stream.join(10) - f.changed_at("solo", "token_revoked")
        report("no Redis: token revoke (commit) -> GET stream on replica 1 ended (bound 1 s + one query)", [took])
        assert took < 2.0
        assert call(f.replicas[0].url, token, "tools__echo")[0] == 401


def test_redis_stopped_limits_become_per_replica_shares_and_changes_arrive_by_polling(
        tmp_path: Path, pg_database: Any) -> None:
    with private_redis(tmp_path / "redis") as server, \
            fleet(tmp_path, pg_database.schema_url(), 2, redis_url=server.url,
                  env={"AEGRESS_MAX_CALLS_PER_ACTOR": "2"}) as f:
        tokens = f.tenant("down", ("a1", "a2", "a3", "a4", "a5"), policy=rate(4, "a1", "a2", "a3"))
        a, b = f.replicas
        time.sleep(1.0)  # heartbeats: each replica has seen the other
        warm(f, tokens["a5"], "tools__whoami")

        def calls(token: str, targets: list[Any]) -> list[bool]:
            return [not rate_limited(call(r.url, token, "tools__echo", {"text": "x"})[1]) for r in targets]

        def slow_calls(token: str, targets: list[Any]) -> list[int]:
            started = [in_background(lambda u=r.url: call(u, token, "tools__slow", {"seconds": 2})) for r in targets]
            for thread, _ in started:
                thread.join(30)
            return [out["value"][0] for _, out in started]

        # Redis up: one bucket (4) and one in-flight cap (2) for the fleet
        assert calls(tokens["a1"], [a, b] * 4) == [True] * 4 + [False] * 4
        assert sorted(slow_calls(tokens["a4"], [a, a, b])) == [200, 200, 429]

        server.stop()
        for r in f.replicas:
            wait_output(r.proc, "shared limits: Redis did not answer")
        # each replica now admits its share (2 of 4 calls, 1 of 2 in flight): stricter, never more in all
        assert calls(tokens["a2"], [a] * 4) == [True, True, False, False]
        assert calls(tokens["a2"], [b] * 4) == [True, True, False, False]
        assert sorted(slow_calls(tokens["a4"], [a, a])) == [200, 429]
        # signals are gone: a policy change still arrives, by polling (0.5 s), and the command stays quiet
        probes = [first_time(lambda http, u=r.url: blocked(call(u, tokens["a5"], "tools__whoami", http=http)[1]))
                  for r in f.replicas]
        (tmp_path / "block.toml").write_text(
            rate(4, "a1", "a2", "a3") + '\n[[rules]]\nid = "no-whoami"\nname = "whoami"\nverdict = "block"\n')
        applied = f.cli("policy", "apply", str(tmp_path / "block.toml"), "--tenant", "down", "--yes")
        assert "Redis" not in applied.stderr and "rror" not in applied.stderr
        for p in probes:
            p["thread"].join(15)
        took = [p["at"] - f.changed_at("down", "policy_changed") for p in probes]
        report("Redis stopped: policy apply (commit) -> in force on each replica (polling, 0.5 s)", took)
        assert max(took) < 1.5
        for r in f.replicas:  # still serving
            assert httpx2.get(r.base + "/health", timeout=10).status_code == 200
            assert text_of(call(r.url, tokens["a5"], "tools__echo", {"text": "up"})[1]) == "up"

        server.start()
        for r in f.replicas:
            wait_output(r.proc, "shared limits: Redis answers again")
            wait_output(r.proc, "Redis is back")
        # shared again: a fresh actor gets exactly one bucket across both replicas
        again = calls(tokens["a3"], [a, b] * 4)
        assert again == [True] * 4 + [False] * 4, (again, [r.proc.output[-12:] for r in f.replicas])
