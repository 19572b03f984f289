"""The operator view's pure parts: gateway.status summaries, console credentials and headers, page escaping
(no sockets, no processes; a lock file in a temp dir at most)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway import operators, status
from gateway.config import Limits, ServeSettings
from gateway.console import auth, html
from gateway.console.app import Throttle
from gateway.ingress import StaticBinding
from gateway.store.base import EvidenceRow

NOW = datetime(2026, 3, 4, 12, 0, 0, tzinfo=UTC)


def test_gate_counts_name_each_verdict() -> None:
    rows = [("intent", "allow", 5), ("intent", "review_approved", 2), ("decision", "review", 3),
            ("decision", "deny", 4), ("decision", "hidden", 1), ("review_denied", "review_denied", 6),
            ("outcome", "allow", 7), ("operator_change", "operator_change", 9)]
    assert status.gate_counts(rows) == {"allowed": 7, "held": 3, "blocked": 4, "hidden": 1, "denied": 6}
    assert status.gate_counts([]) == dict.fromkeys(status.GATE_KEYS, 0)


@pytest.mark.parametrize(("outcomes", "health"), [
    ({}, "idle"),
    ({"refused": 4, "cancelled": 1, "not_forwarded": 2}, "idle"),  # says nothing about the upstream
    ({"completed": 3, "tool_error": 1}, "ok"),
    ({"completed": 3, "timeout": 1}, "degraded"),
    ({"failed": 2, "timeout": 1, "refused": 5}, "failing"),
])
def test_upstream_health_from_recent_outcomes(outcomes: dict[str, int], health: str) -> None:
    assert status.upstream_health(outcomes) == health


def test_time_formats_compare_as_text_with_the_stored_ones() -> None:
    assert status.evidence_time(NOW) == "2026-03-04T12:00:00.000000Z"
    assert status.calls_time(NOW) == "2026-03-04T12:00:00.000+00:00"
    assert status.age_s("2026-03-04T11:59:30.000000Z", NOW) == 30.0
    assert status.age_s("2026-03-04T11:59:00.000+00:00", NOW) == 60.0
    assert status.age_s("not a time", NOW) is None and status.age_s(None, NOW) is None


def test_evidence_summary_per_tenant_and_overall() -> None:
    sizes = {"p/tenant/acme": 10, "p/tenant/beta": 4, "p/security": 2}
    checkpoints = [("p/tenant/acme", 8, "2026-03-04T11:59:00.000000Z"),
                   ("p/security", 2, "2026-03-04T11:50:00.000000Z")]
    note = status.verification_note([{"origin": "p/tenant/acme", "ok": True, "records": 10, "finding": None},
                                     {"origin": "p/security", "ok": False, "records": 2,
                                      "finding": {"problem": "bad-signature", "message": "no trusted signature"}}],
                                    NOW - timedelta(hours=2), "ops")
    every = status.evidence_summary(sizes, checkpoints, note, NOW)
    assert every["records"] == 16 and every["logs"] == 3
    assert every["awaiting_checkpoint"] == 2 + 4  # acme's two newest, all of beta's
    assert every["last_checkpoint"] == {"origin": "p/tenant/acme", "tenant": "acme", "size": 8,
                                        "signed_at": "2026-03-04T11:59:00.000000Z", "age_s": 60.0}
    verified = every["last_verification"]
    assert verified["ok"] is False and verified["by"] == "ops" and verified["age_s"] == 7200.0
    assert verified["records"] == 12
    assert [log["problem"] for log in verified["logs"]] == [None, "bad-signature: no trusted signature"]
    beta = status.evidence_summary(sizes, checkpoints, None, NOW, tenant="beta")
    assert beta["records"] == 4 and beta["last_checkpoint"] is None and beta["last_verification"] is None
    assert status.verification_view("{not json", NOW) is None


def _row(data: dict[str, object], row_id: int = 1) -> EvidenceRow:
    raw = json.dumps({"body": data}).encode()
    return EvidenceRow(row_id, "o", row_id, "intent", "", "", "", "", "", "", None, b"", raw)


def test_clients_from_calls_and_versions_from_records() -> None:
    versions = status.client_versions([_row({"client_name": "claude-code", "client_version": "2.1"}),
                                       _row({"client_name": "claude-code", "client_version": "2.0"}),
                                       _row({"client_name": "claude-code", "client_version": "2.1"}),
                                       _row({"client_name": None}), EvidenceRow(9, "o", 9, "intent", "", "", "", "", "",
                                                                                "", None, b"", b"garbage")])
    assert versions == {"claude-code": ["2.1", "2.0"], "": []}
    activity = [("claude-code", 12, "2026-03-04T11:50:00.000+00:00"), ("", 3, "2026-03-04T10:00:00.000+00:00")]
    clients = status.clients_summary(activity, versions, NOW)
    assert clients == [
        {"name": "claude-code", "versions": ["2.1", "2.0"], "calls": 12, "last_seen": "2026-03-04T11:50:00.000+00:00",
         "active": True},
        {"name": "(unnamed)", "versions": [], "calls": 3, "last_seen": "2026-03-04T10:00:00.000+00:00",
         "active": False},
    ]


def test_serving_facts_hold_no_secret_and_name_the_binding() -> None:
    settings = ServeSettings(ingress="tunnel", public_url="https://mcp.example.com/mcp",
                             static_binding=StaticBinding("acme", "alice", "keyring:token:acme:alice"))
    facts = status.serving_facts(settings, evidence_on=True, store_backend="postgres",
                                 env={"AEGRESS_REDIS_URL": "redis://:pw@h/0", "AEGRESS_DATABASE_URL": "postgres://x"})
    assert facts["binding"] == "static" and facts["static_tenant"] == "acme" and facts["bus"] == "redis"
    text = json.dumps(facts)
    assert "pw" not in text and "keyring:" not in text and "postgres://" not in text
    assert status.binding_view(facts, True)["text"].startswith("static binding: only one token, of tenant acme")
    assert status.binding_view(facts, False)["mode"] == "unknown"
    assert "not recorded" in status.binding_view({}, True)["text"]
    plain = status.serving_facts(ServeSettings(), evidence_on=False, store_backend="sqlite", env={})
    assert plain["binding"] == "bearer" and plain["evidence"] == "off" and plain["bus"] == "local"


@pytest.mark.parametrize(("facts", "path"), [
    ({"ingress": "direct"}, "direct"),
    ({"ingress": "tunnel"}, "tunnel"),
    ({"ingress": "direct", "json_only": True}, "aws-lambda"),
    ({"ingress": "direct", "environment": "azure-container-apps"}, "azure"),
    ({"ingress": "direct", "environment": "kubernetes"}, "docker"),
    ({"ingress": "direct", "environment": "container"}, "docker"),
    ({"ingress": "direct", "environment": "container", "deploy_path": "managed"}, "managed"),  # the operator says
    ({"ingress": "tunnel", "deploy_path": "no-such-path"}, "tunnel"),
])
def test_deploy_path_in_use(facts: dict[str, object], path: str) -> None:
    view = status.deploy_in_use(facts, running=True)
    assert view["path"] == path and view["title"] and view["runbook"]
    assert status.deploy_in_use(facts, running=False)["path"] is None


def test_environment_detection() -> None:
    never = lambda _path: False  # noqa: E731
    assert status.detect_environment({}, never) is None
    assert status.detect_environment({"AWS_LAMBDA_FUNCTION_NAME": "f"}, never) == "aws-lambda"
    assert status.detect_environment({"CONTAINER_APP_NAME": "gw"}, never) == "azure-container-apps"
    assert status.detect_environment({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, never) == "kubernetes"
    assert status.detect_environment({}, lambda path: path == "/.dockerenv") == "container"


def test_find_process_reads_the_lock_file(tmp_path: Path) -> None:
    assert status.find_process(tmp_path, probe=False).running is False
    lock = tmp_path / "aegress.lock"
    lock.write_text("")
    assert status.find_process(tmp_path, probe=False).note == "no gateway is serving this data dir"
    lock.write_text(json.dumps({"pid": 4242, "purpose": "serve", "url": "http://127.0.0.1:9/mcp", "started_at": 1.0,
                                "version": "1.2.3", "binding": "bearer"}))
    gone = status.find_process(tmp_path, probe=False, alive=lambda pid: False)
    assert not gone.running and "pid 4242, is gone" in gone.note
    up = status.find_process(tmp_path, probe=False, alive=lambda pid: pid == 4242)
    assert up.running and up.url == "http://127.0.0.1:9/mcp" and up.facts == {"version": "1.2.3", "binding": "bearer"}
    view = up.to_dict(datetime.fromtimestamp(61.0, UTC))
    assert view["uptime_s"] == 60.0 and view["version"] == "1.2.3" and view["answering"] is False
    lock.write_text(json.dumps({"pid": 4242, "purpose": "audit repair", "url": None}))
    held = status.find_process(tmp_path, probe=False, alive=lambda pid: True)
    assert not held.running and "`audit repair`" in held.note


def test_health_url() -> None:
    assert status.health_url("http://127.0.0.1:8765/mcp") == "http://127.0.0.1:8765/health"
    assert status.health_url("http://0.0.0.0:8765/mcp") == "http://127.0.0.1:8765/health"
    assert status.health_url("http://[::]:8765/mcp") == "http://[::1]:8765/health"


# -- the console's credentials -----------------------------------------------------------------------------------
def test_operator_and_actor_tokens_differ_in_shape() -> None:
    token = operators.mint_operator_token()
    assert operators.looks_like_operator_token(token) and not operators.looks_like_actor_token(token)
    assert operators.looks_like_actor_token("aeg_" + "a" * 40) and not operators.looks_like_operator_token("aeg_x")
    assert not operators.looks_like_operator_token(token + "x") and not operators.looks_like_operator_token(
        "aegop_" + "é" * 40)
    assert operators.operator_key(b"k" * 32) != operators.operator_key(b"j" * 32)


def test_session_cookie_is_signed_bound_and_expires() -> None:
    key = auth.session_key(b"m" * 32)
    value = auth.make_session(key, "op_abc", now=1000.0, ttl=60)
    assert auth.check_session(key, value, 1059.0) == "op_abc"
    assert auth.check_session(key, value, 1060.0) is None  # expired
    assert auth.check_session(auth.session_key(b"n" * 32), value, 1000.0) is None  # another deployment's key
    token_id, expiry, mac = value.split(".")
    assert auth.check_session(key, f"op_other.{expiry}.{mac}", 1000.0) is None  # another token's name
    assert auth.check_session(key, f"{token_id}.{int(expiry) + 3600}.{mac}", 1000.0) is None  # a longer life
    for junk in (None, "", "a.b", "x" * 300, "op_abc.notanumber.mac"):
        assert auth.check_session(key, junk, 1000.0) is None
    cookie = auth.session_cookie(value)
    assert cookie.startswith("__Host-aegress-console=")
    for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert flag in cookie
    assert "Max-Age=0" in auth.cleared_cookie()


def test_bearer_and_same_origin() -> None:
    assert auth.bearer(None) is None
    assert auth.bearer("Bearer abc ") == "abc" and auth.bearer("bearer abc") == "abc"
    assert auth.bearer("Basic abc") == "" and auth.bearer("Bearer ") == ""
    assert auth.same_origin(None, "127.0.0.1:8765")  # not a browser
    assert auth.same_origin("http://127.0.0.1:8765", "127.0.0.1:8765")
    assert not auth.same_origin("http://evil.example", "127.0.0.1:8765")
    assert not auth.same_origin("null", "127.0.0.1:8765")
    assert auth.same_origin("https://mcp.example.com", "127.0.0.1:8765", ("https://mcp.example.com",))


def test_security_headers() -> None:
    headers = dict(auth.SECURITY_HEADERS)
    for part in ("default-src 'none'", "style-src 'self'", "img-src 'self' data:", "form-action 'self'",
                 "frame-ancestors 'none'"):
        assert part in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and dict(auth.NO_STORE)["cache-control"] == "no-store"


def test_throttle_counts_failures_per_address_in_a_window() -> None:
    clock = [0.0]
    throttle = Throttle(limit=3, window_s=10, clock=lambda: clock[0])
    for _ in range(3):
        assert throttle.retry_after("10.0.0.1") is None
        throttle.fail("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 10.0 and throttle.retry_after("10.0.0.2") is None
    clock[0] = 10.5
    assert throttle.retry_after("10.0.0.1") is None


# -- the pages -------------------------------------------------------------------------------------------------------
def test_pages_escape_every_value_and_hold_no_script_or_inline_style() -> None:
    page = html.login_page('<script>alert("x")</script>', "hint & more")
    assert "<script>" not in page and "&lt;script&gt;" in page and "hint &amp; more" in page
    framed = html.layout("T", "/console/tools", "<p>x</p>", operator='op"><b>', tenants=["acme"], tenant="acme")
    assert 'op&quot;&gt;&lt;b&gt;' in framed and "?tenant=acme" in framed
    for text in (page, framed, html.message_page("Nope", "m")):
        assert "<script" not in text and "style=" not in text and "http://" not in text and "https://" not in text
        assert '<link rel="stylesheet" href="/console/console.css">' in text


def test_status_view_of_a_limited_settings_object() -> None:
    # what build_gateway records comes from ServeSettings alone: Lambda's JSON-only mode is the Lambda path
    facts = status.serving_facts(ServeSettings(limits=Limits(json_only=True)), evidence_on=True, store_backend="x",
                                 env={})
    assert status.deploy_in_use(facts, running=True)["path"] == "aws-lambda"
