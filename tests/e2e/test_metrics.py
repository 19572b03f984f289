"""`/metrics` and OTLP traces of a real gateway process: access modes, what the exposition holds, and the spans a
real OTLP/HTTP receiver (started here, on loopback port 0) gets for a real tools/call, without argument values."""

from __future__ import annotations

import asyncio
import http.server
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observe import STAGES
from tests.e2e.console_support import GATEWAY_ENV, make_calls, seed, wait_for_checkpoints
from tests.procs import ROOT, Gateway, aegress_json, allow_all, mcp_client, run, run_gateway, setup_tenant


class Receiver:
    """An OTLP/HTTP trace receiver: keeps every POST /v1/traces body, answers an empty success."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path == "/v1/traces":
                    with receiver._lock:
                        receiver.bodies.append(body)
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def raw(self) -> bytes:
        with self._lock:
            return b"".join(self.bodies)

    def spans(self) -> list[Any]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        with self._lock:
            bodies = list(self.bodies)
        out = []
        for body in bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    out.extend(scope.spans)
        return out


def families(text: str) -> dict[str, list[Any]]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def scrape(gw: Gateway, token: str | None = None, **headers: str) -> httpx2.Response:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx2.get(f"{gw.base}/metrics", headers=headers, timeout=10)


def refusal(response: httpx2.Response, status: int) -> dict[str, Any]:
    """Our JSON error body (docs/errors.md), and nothing of the exposition."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["jsonrpc"] == "2.0" and body["id"] is None and "aegress_" not in response.text
    return dict(body["error"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Receiver, str, str]]:
    """A gateway in the default mode (operator token, no tenant label) exporting traces to our receiver, after
    the console's calls (allowed, blocked, hidden, one left pending review) and one echo of a nonce."""
    home = tmp_path_factory.mktemp("metrics") / "home"
    tokens = seed(home)
    nonce = "nonce-" + secrets.token_hex(8)
    with Receiver() as receiver:
        env = {**GATEWAY_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
               "OTEL_SERVICE_NAME": "aegress-test"}
        with run_gateway(home, env=env) as gw:
            gw.tokens = tokens
            make_calls(gw, tokens[("acme", "alice")])

            async def echo() -> None:
                async with mcp_client(gw.url, tokens[("acme", "alice")]) as client:
                    await client.call_tool("tools__echo", {"text": nonce})

            run(echo())
            wait_for_checkpoints(home)
            operator = str(aegress_json(home, "operator", "token", "issue", "--label", "scraper")["token"])
            yield gw, receiver, operator, nonce


def test_metrics_need_an_operator_token(served: tuple[Gateway, Receiver, str, str]) -> None:
    gw, _, operator, _ = served
    missing = scrape(gw)
    assert refusal(missing, 401)["data"]["code"] == "unauthorized"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    for bad in ("aegop_" + "x" * 40, "not-a-token"):
        assert refusal(scrape(gw, bad), 401)["data"]["code"] == "invalid-token"
    jwt_shaped = scrape(gw, "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln")  # an OAuth access token's shape
    assert refusal(jwt_shaped, 403)["data"]["code"] == "metrics-not-operator"
    actor = scrape(gw, gw.tokens[("acme", "alice")])
    assert refusal(actor, 403)["data"]["code"] == "metrics-not-operator"
    assert gw.tokens[("acme", "alice")] not in actor.text
    assert refusal(httpx2.post(f"{gw.base}/metrics", headers={"Authorization": f"Bearer {operator}"}, timeout=10),
                   405)["data"]["code"] == "method-not-allowed"
    ok = scrape(gw, operator)
    assert ok.status_code == 200, ok.text
    assert ok.headers["content-type"].startswith("text/plain")
    fams = families(ok.text)
    for name in ("aegress_build_info", "aegress_requests", "aegress_request_duration_seconds",
                 "aegress_stage_duration_seconds", "aegress_upstream_errors", "aegress_review_wait_seconds",
                 "aegress_evidence_append_duration_seconds", "aegress_evidence_batch_size",
                 "aegress_review_queue_depth", "aegress_checkpoint_age_seconds"):
        assert name in fams, name


def test_review_queue_depth_and_checkpoint_age(served: tuple[Gateway, Receiver, str, str]) -> None:
    gw, _, operator, _ = served
    fams = families(scrape(gw, operator).text)
    assert fams["aegress_review_queue_depth"][0].value >= 1  # the console's `slow` call, still pending
    age = fams["aegress_checkpoint_age_seconds"][0].value
    assert 0 <= age < 120


def test_no_tenant_label_by_default(served: tuple[Gateway, Receiver, str, str]) -> None:
    gw, _, operator, _ = served
    text = scrape(gw, operator).text
    assert "tenant=" not in text and '"acme"' not in text and '"beta"' not in text


# -- these need the request path's observer calls (the pipeline branch) ---------------------------------------
def test_requests_and_stages_are_counted(served: tuple[Gateway, Receiver, str, str]) -> None:
    gw, _, operator, _ = served
    fams = families(scrape(gw, operator).text)
    calls = {(s.labels["verdict"], s.labels["outcome"]): s.value for s in fams["aegress_requests"]
             if s.name == "aegress_requests_total" and s.labels["method"] == "tools/call"}
    assert calls.get(("allow", "ok"), 0) >= 4  # three echoes and the nonce's
    assert sum(v for (verdict, _), v in calls.items() if verdict == "block") >= 1
    counts = {s.labels["stage"]: s.value for s in fams["aegress_stage_duration_seconds"] if s.name.endswith("_count")}
    assert set(counts) <= set(STAGES)
    for stage in ("authenticate", "decide", "forward"):
        assert counts.get(stage, 0) >= 4, counts
    appended = [s.value for s in fams["aegress_evidence_batch_size"] if s.name.endswith("_count")]
    assert appended and appended[0] >= 1


def test_scraping_is_not_an_mcp_request(served: tuple[Gateway, Receiver, str, str]) -> None:
    gw, _, operator, _ = served

    def total(text: str) -> float:
        return sum(s.value for s in families(text)["aegress_requests"] if s.name == "aegress_requests_total")

    first = total(scrape(gw, operator).text)
    for _ in range(3):
        scrape(gw, operator)
        scrape(gw)
    assert total(scrape(gw, operator).text) == first
    assert first > 0


def test_one_span_per_stage_and_no_argument_values(served: tuple[Gateway, Receiver, str, str]) -> None:
    gw, receiver, operator, nonce = served
    deadline = time.monotonic() + 20
    calls: list[Any] = []
    while time.monotonic() < deadline:
        calls = [s for s in receiver.spans() if s.name == "mcp tools/call"]
        if len(calls) >= 5:
            break
        time.sleep(0.2)
    assert len(calls) >= 5, [s.name for s in receiver.spans()]
    spans = receiver.spans()
    # what never reached dispatch (the notification after initialize, GET streams, DELETE) has its own name
    assert any(s.name == "mcp edge" for s in spans)
    for call in calls:
        children = [s for s in spans if s.parent_span_id == call.span_id and s.trace_id == call.trace_id]
        names = [c.name for c in children]
        assert set(names) <= set(STAGES) and len(names) == len(set(names)) and "authenticate" in names, names
        attributes = {a.key: a.value.string_value for a in call.attributes}
        if attributes["aegress.verdict"] == "allow" and attributes["aegress.outcome"] == "ok":
            assert names == list(STAGES), names  # forwarded: every stage, in order
        for child in children:
            assert call.start_time_unix_nano <= child.start_time_unix_nano <= child.end_time_unix_nano
            assert child.end_time_unix_nano <= call.end_time_unix_nano
            assert {a.key for a in child.attributes} == {"aegress.stage"}
        keys = {a.key for a in call.attributes}
        assert keys <= {"mcp.method.name", "aegress.verdict", "aegress.outcome", "aegress.upstream",
                        "aegress.upstream.error"}, keys
    raw = receiver.raw()
    assert b"aegress-test" in raw  # OTEL_SERVICE_NAME is the SDK's
    for secret in (nonce, "hello 0", "bad-1", gw.tokens[("acme", "alice")], operator, "acme"):
        assert secret.encode() not in raw, secret


def test_a_valid_token_is_never_throttled(tmp_path: Any) -> None:
    """Failures from one address throttle further failures (429), never a valid operator token from it."""
    home = tmp_path / "home"
    with run_gateway(home, "--auth-throttle", "2") as gw:
        operator = str(aegress_json(home, "operator", "token", "issue", "--label", "scraper")["token"])
        for _ in range(2):
            assert refusal(scrape(gw, "aegop_" + "x" * 40), 401)["data"]["code"] == "invalid-token"
        throttled = scrape(gw, "aegop_" + "y" * 40)
        assert refusal(throttled, 429)["data"]["code"] == "auth-throttled"
        assert int(throttled.headers["retry-after"]) >= 1
        ok = scrape(gw, operator)
        assert ok.status_code == 200 and "aegress_build_info" in ok.text


# -- other modes -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loopback(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    home = tmp_path_factory.mktemp("metrics-loopback") / "home"
    token = setup_tenant(home, "acme", "alice")
    allow_all(home, "acme")
    with run_gateway(home, "--metrics-tenant-label", env={"AEGRESS_METRICS": "loopback"}) as gw:
        gw.tokens[("acme", "alice")] = token

        async def listing() -> None:
            async with mcp_client(gw.url, token) as client:
                await client.list_tools()

        run(listing())
        yield gw


def test_loopback_mode_needs_no_token_but_refuses_proxied_requests(loopback: Gateway) -> None:
    ok = scrape(loopback)
    assert ok.status_code == 200 and "aegress_build_info" in ok.text
    for header, value in (("X-Forwarded-For", "203.0.113.7"), ("Forwarded", "for=203.0.113.7"),
                          ("X-Real-IP", "203.0.113.7")):
        assert refusal(scrape(loopback, **{header: value}), 403)["data"]["code"] == "metrics-loopback-only"
    assert refusal(scrape(loopback, Host="evil.example"), 421)["data"]["code"] == "invalid-host"


def test_tenant_label_when_enabled(loopback: Gateway) -> None:
    fams = families(scrape(loopback).text)
    requests = [s for s in fams["aegress_requests"] if s.name == "aegress_requests_total"]
    assert requests and all(s.labels.get("tenant") == "acme" for s in requests)


def test_off_answers_404(tmp_path: Any) -> None:
    home = tmp_path / "home"
    with run_gateway(home, "--metrics", "off") as gw:
        assert refusal(scrape(gw), 404)["data"]["code"] == "not-found"


def test_tracing_sdk_is_imported_only_when_configured() -> None:
    code = ("import os, sys\n"
            "for k in [k for k in os.environ if k.startswith('OTEL_')]: del os.environ[k]\n"
            "import aegress_cli.main\n"
            "from gateway.config import ServeSettings\n"
            "from gateway.server import observers\n"
            "m, t = observers(ServeSettings(), None)\n"
            "assert m is not None and t is None\n"
            "bad = sorted(n for n in sys.modules if n.startswith(('opentelemetry.sdk', 'opentelemetry.exporter')))\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_otlp_export_reaches_a_real_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exporter as `aegress serve` builds it (standard OTEL_* settings), to our receiver over loopback."""
    from gateway import tracing

    with Receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
        monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
        tracer = tracing.from_env(os.environ, version="9.9.9")
        assert tracer is not None

        async def request() -> None:
            start = time.perf_counter_ns()
            for i, stage in enumerate(STAGES):
                tracer.stage(stage, start + i * 1000, start + i * 1000 + 500, "acme")
            tracer.call_done("tools/call", "allow", "ok", start, start + 10_000, "acme")

        asyncio.run(request())
        tracer.shutdown()  # flushes the batch
        spans = receiver.spans()
        assert sorted(s.name for s in spans) == sorted([*STAGES, "mcp tools/call"])
        root = next(s for s in spans if s.name == "mcp tools/call")
        assert all(s.parent_span_id == root.span_id for s in spans if s is not root)
        raw = receiver.raw()
        assert b"aegress" in raw and b"9.9.9" in raw and b"acme" not in raw


class BlackHole:
    """A collector address that accepts connections and never answers (a hung or firewalled collector)."""

    def __enter__(self) -> BlackHole:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        try:
            for _ in range(64):  # bounded
                self.held.append(self.sock.accept()[0])
        except OSError:  # closed at exit
            return

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_collector_that_never_answers_does_not_hold_the_shutdown(tmp_path: Any) -> None:
    """The exporter would wait OTEL_EXPORTER_OTLP_TIMEOUT (10 minutes here) for the last batch and then retry;
    the gateway gives the last spans tracing.SHUTDOWN_FLUSH_S, stops the exporter, says so, and exits (it held
    shutdown for the whole timeout before)."""
    home = tmp_path / "home"
    token = setup_tenant(home, "acme", "alice")
    allow_all(home, "acme")
    with BlackHole() as collector:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_EXPORTER_OTLP_TIMEOUT": "600"}
        with run_gateway(home, env=env) as gw:
            async def listing() -> None:
                async with mcp_client(gw.url, token) as client:
                    await client.list_tools()

            run(listing())
            gw.proc.popen.terminate()
            try:
                gw.proc.popen.wait(120)  # far below the exporter's 600 s, far above the bounded flush
            except subprocess.TimeoutExpired:
                pytest.fail("the gateway's shutdown waited for the trace exporter")
            output = "".join(gw.proc.output)
    assert "did not take the last spans" in output
    assert gw.proc.popen.returncode == 0
