"""The metrics and tracing observers, driven directly with synthetic timestamps (no gateway, no sockets)."""

from __future__ import annotations

import asyncio
import gc
from datetime import UTC, datetime

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from gateway import tracing
from gateway.errors import ConfigError
from gateway.metrics import (
    MetricsObserver,
    check_metrics_mode,
    exposition,
    is_loopback,
)
from gateway.observe import STAGES, Observers, mcp_methods, method_label

MS = 1_000_000


def scrape(observer: MetricsObserver) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    body, content_type = exposition(observer)
    assert content_type.startswith("text/plain")
    return {f.name: [(s.name, s.labels, s.value) for s in f.samples]
            for f in text_string_to_metric_families(body.decode())}


def one_call(observer: MetricsObserver | tracing.TracingObserver | Observers, *, tenant: str = "acme",
             method: str = "tools/call", t0: int = 10 * MS) -> None:
    """What the request path reports for one tools/call: six stages, the answer, one evidence commit."""
    for i, name in enumerate(STAGES):
        observer.stage(name, t0 + i * MS, t0 + i * MS + 200_000, tenant)
    observer.call_done(method, "allow", "ok", t0, t0 + 7 * MS, tenant)
    observer.evidence_commit(0.003, 5)


def test_requests_stages_and_evidence_are_counted_in_seconds() -> None:
    m = MetricsObserver()
    one_call(m)
    one_call(m)
    m.call_done("made/up", "none", "error", 0, MS)
    m.upstream_error("tools", "timeout", "acme")
    m.review_waited(42.0, "acme")
    fams = scrape(m)
    requests = {tuple(sorted(labels.items())): v for name, labels, v in fams["aegress_requests"]
                if name == "aegress_requests_total"}
    assert requests == {(("method", "tools/call"), ("outcome", "ok"), ("verdict", "allow")): 2.0,
                        (("method", "other"), ("outcome", "error"), ("verdict", "none")): 1.0}
    stages = {labels["stage"]: v for name, labels, v in fams["aegress_stage_duration_seconds"]
              if name.endswith("_count")}
    assert stages == dict.fromkeys(STAGES, 2.0)
    sums = [v for name, labels, v in fams["aegress_stage_duration_seconds"]
            if name.endswith("_sum") and labels["stage"] == "decide"]
    assert sums == [pytest.approx(0.0004)]
    # 0.2 ms lands in the 0.25 ms bucket, not below
    decide = {labels["le"]: v for name, labels, v in fams["aegress_stage_duration_seconds"]
              if name.endswith("_bucket") and labels["stage"] == "decide"}
    assert decide["0.0001"] == 0 and decide["0.00025"] == 2 and decide["+Inf"] == 2
    request = {labels["le"]: v for name, labels, v in fams["aegress_request_duration_seconds"]
               if name.endswith("_bucket") and labels["method"] == "tools/call"}
    assert request["0.005"] == 0 and request["0.01"] == 2
    assert ("aegress_upstream_errors_total", {"upstream": "tools", "kind": "timeout"}, 1.0) in fams[
        "aegress_upstream_errors"]
    batch = {labels["le"]: v for name, labels, v in fams["aegress_evidence_batch_size"] if name.endswith("_bucket")}
    assert batch["4.0"] == 0 and batch["8.0"] == 2
    append = [v for name, _, v in fams["aegress_evidence_append_duration_seconds"] if name.endswith("_sum")]
    assert append == [pytest.approx(0.006)]
    wait = {labels["le"]: v for name, labels, v in fams["aegress_review_wait_seconds"] if name.endswith("_bucket")}
    assert wait["30.0"] == 0 and wait["60.0"] == 1
    assert fams["aegress_build_info"][0][2] == 1.0


def test_tenant_label_only_when_the_operator_allows_it() -> None:
    off, on = MetricsObserver(), MetricsObserver(tenant_label=True)
    for m in (off, on):
        one_call(m, tenant="acme")
        m.upstream_error("tools", "error", "acme")
    body_off = exposition(off)[0].decode()
    assert "acme" not in body_off and "tenant" not in body_off
    fams = scrape(on)
    for family in ("aegress_requests", "aegress_stage_duration_seconds", "aegress_upstream_errors"):
        assert fams[family] and all(labels.get("tenant") == "acme" for _, labels, _ in fams[family])
    # never on the families that are not per request
    assert all("tenant" not in labels for _, labels, _ in fams["aegress_evidence_batch_size"])


def test_methods_outside_the_mcp_vocabulary_share_one_label() -> None:
    m = MetricsObserver()
    for i in range(50):
        m.call_done(f"random/{i}", "none", "error", 0, MS)
    fams = scrape(m)
    assert {labels["method"] for _, labels, _ in fams["aegress_requests"]} == {"other"}
    assert method_label("tools/call") == "tools/call" and method_label("x" * 500) == "other"


def test_the_method_labels_are_the_methods_the_gateway_answers() -> None:
    from gateway.methods import HANDLERS

    assert mcp_methods() == {"initialize", *HANDLERS}
    assert method_label("initialize") == "initialize" and method_label("tasks/get") == "other"


class _Store:
    """The two store reads a scrape makes, as the store answers them (held calls, checkpoints, log sizes)."""

    def __init__(self, pending: int, checkpoint_at: str | None) -> None:
        self.pending, self.checkpoint_at = pending, checkpoint_at

    def count_held_calls(self, tenant_id: str | None = None, status: str | None = None) -> int:
        assert tenant_id is None and status == "pending"
        return self.pending

    def evidence_sizes(self) -> dict[str, int]:
        return {"aeg/tenant/acme": 10}

    def latest_checkpoints(self) -> list[tuple[str, int, str]]:
        return [] if self.checkpoint_at is None else [("aeg/tenant/acme", 7, self.checkpoint_at)]


def test_review_queue_depth_and_checkpoint_age_are_read_at_scrape_time() -> None:
    now = datetime(2026, 1, 2, 3, 4, 35, tzinfo=UTC)
    m = MetricsObserver(store=_Store(3, "2026-01-02T03:04:05.000000Z"), clock=lambda: now)  # type: ignore[arg-type]
    fams = scrape(m)
    assert fams["aegress_review_queue_depth"][0][2] == 3
    assert fams["aegress_checkpoint_age_seconds"][0][2] == 30.0
    assert fams["aegress_evidence_awaiting_checkpoint"][0][2] == 3
    never = scrape(MetricsObserver(store=_Store(0, None), clock=lambda: now))  # type: ignore[arg-type]
    assert "aegress_checkpoint_age_seconds" not in never and never["aegress_review_queue_depth"][0][2] == 0


def test_settings_checks() -> None:
    assert check_metrics_mode(" Loopback ") == "loopback"
    with pytest.raises(ConfigError) as err:
        check_metrics_mode("public")
    assert err.value.code == "metrics-mode"
    assert is_loopback("127.0.0.1") and is_loopback("127.9.9.9") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback("::ffff:10.0.0.1") and not is_loopback("")
    assert not is_loopback("localhost")  # a socket peer is an address, never a name


@pytest.mark.parametrize(("env", "on"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, False),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
])
def test_tracing_is_off_unless_configured(env: dict[str, str], on: bool) -> None:
    assert tracing.enabled(env) is on
    if not on:
        assert tracing.from_env(env) is None


def test_only_http_protobuf_is_accepted() -> None:
    tracing.check_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    with pytest.raises(ConfigError) as err:
        tracing.check_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert err.value.code == "otel-protocol"


def _tracer(tenant_label: bool = False) -> tuple[tracing.TracingObserver, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return tracing.TracingObserver(tracing.provider_for(exporter, batch=False), tenant_label=tenant_label), exporter


def test_one_span_per_stage_under_one_request_span() -> None:
    tracer, exporter = _tracer()

    async def request() -> None:
        one_call(tracer, t0=50 * MS)

    asyncio.run(request())
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == [*STAGES, "mcp tools/call"]
    root = spans[-1]
    assert root.parent is None and root.resource.attributes["service.name"] == "aegress"
    assert dict(root.attributes or {}) == {"mcp.method.name": "tools/call", "aegress.verdict": "allow",
                                           "aegress.outcome": "ok"}
    for i, span in enumerate(spans[:-1]):
        assert span.parent is not None and span.parent.span_id == root.context.span_id
        assert span.context.trace_id == root.context.trace_id
        assert dict(span.attributes or {}) == {"aegress.stage": STAGES[i]}
        assert span.end_time - span.start_time == 200_000
        assert span.start_time - root.start_time == i * MS
    assert root.end_time - root.start_time == 7 * MS


def test_tenant_attribute_only_when_allowed_and_upstream_errors_named() -> None:
    for allowed in (False, True):
        tracer, exporter = _tracer(tenant_label=allowed)

        async def request(t: tracing.TracingObserver) -> None:
            t.stage("authenticate", 0, MS, "acme")
            t.upstream_error("tools", "timeout", "acme")
            t.call_done("tools/call", "allow", "timeout", 0, 2 * MS, "acme")

        asyncio.run(request(tracer))
        root = exporter.get_finished_spans()[-1]
        attributes = dict(root.attributes or {})
        assert attributes["aegress.upstream"] == "tools" and attributes["aegress.upstream.error"] == "timeout"
        assert ("aegress.tenant" in attributes) is allowed
        assert not root.status.is_ok


def test_stages_of_a_request_that_never_reached_call_done_are_exported_as_edge() -> None:
    tracer, exporter = _tracer()

    async def refused() -> None:
        tracer.stage("authenticate", 5 * MS, 6 * MS, None)

    async def answered() -> None:
        one_call(tracer)

    async def both() -> None:
        await asyncio.create_task(refused())
        gc.collect()
        await asyncio.create_task(answered())

    asyncio.run(both())
    names = [s.name for s in exporter.get_finished_spans()]
    assert "mcp edge" in names and "mcp tools/call" in names
    edge_span = next(s for s in exporter.get_finished_spans() if s.name == "mcp edge")
    children = [s for s in exporter.get_finished_spans()
                if s.parent and s.parent.span_id == edge_span.context.span_id]
    assert [c.name for c in children] == ["authenticate"]


def test_concurrent_requests_keep_their_own_stages() -> None:
    tracer, exporter = _tracer()

    async def request(n: int) -> None:
        tracer.stage("authenticate", n * MS, n * MS + 10, None)
        await asyncio.sleep(0)
        tracer.stage("decide", n * MS + 20, n * MS + 30, None)
        await asyncio.sleep(0)
        tracer.call_done("tools/list", "none", "ok", n * MS, n * MS + 40, None)

    async def many() -> None:
        await asyncio.gather(*(request(n) for n in range(1, 6)))

    asyncio.run(many())
    spans = exporter.get_finished_spans()
    roots = [s for s in spans if s.parent is None]
    assert len(roots) == 5
    for root in roots:
        kids = [s for s in spans if s.parent and s.parent.span_id == root.context.span_id]
        assert [k.name for k in kids] == ["authenticate", "decide"]
        assert all(k.start_time - root.start_time < 40 for k in kids)


def test_fan_out_reaches_every_observer() -> None:
    metrics = MetricsObserver()
    tracer, exporter = _tracer()

    async def request() -> None:
        one_call(Observers([metrics, tracer]))

    asyncio.run(request())
    assert len(exporter.get_finished_spans()) == len(STAGES) + 1
    assert any(name == "aegress_requests_total" for name, _, _ in scrape(metrics)["aegress_requests"])


def test_a_sampled_out_request_costs_no_stage_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    tracer, exporter = _tracer()

    async def request() -> None:
        one_call(tracer)

    asyncio.run(request())
    assert exporter.get_finished_spans() == ()
