"""OpenTelemetry traces of the request path: one span per JSON-RPC request, one child span per stage.

Off unless the standard OTLP settings ask for it (`enabled`): `OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_TRACES_EXPORTER=otlp`, and `OTEL_SDK_DISABLED` not true.
Only then is opentelemetry imported (`from_env`); the SDK's OTLP/HTTP (protobuf) exporter reads the rest
(endpoint, headers, timeout, compression, certificates), the sampler comes from `OTEL_TRACES_SAMPLER`, the
batching from `OTEL_BSP_*`. The tracer provider is our own, never the global one: libraries that trace through
the global API (the MCP SDK does) export nothing through it.

Cost: stages are buffered per request (a contextvar; the request path reports a request's stages and its
`call_done` from the same task, or from tasks it started) and the spans are made at `call_done`, with the
stages' own timestamps, so only answered requests pay for span creation. Stages whose request never reaches
`call_done` (refused at the edge, notifications, GET streams, DELETE) are exported when their task's context is
dropped, under a request span named `mcp edge` (`aegress.outcome=not_dispatched`).

Attributes are names only: `mcp.method.name`, `aegress.stage`, `aegress.verdict`, `aegress.outcome`,
`aegress.upstream` / `aegress.upstream.error` (on upstream failures), and `aegress.tenant` only when the
operator allows the tenant label. Never arguments, tokens, results or URLs.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from gateway.errors import ConfigError
from gateway.observe import Observer, method_label

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("aegress.tracing")

SERVICE_NAME = "aegress"
MAX_ORPHANS = 1024
"""Stage buffers of requests that ended without `call_done`, waiting to be exported; beyond it they are dropped."""
_TRUE = ("true", "1", "yes", "on")


def enabled(env: Mapping[str, str]) -> bool:
    """Pure: whether the standard OpenTelemetry settings in `env` ask for OTLP traces."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    exporters = {e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()}
    if "none" in exporters:
        return False
    return "otlp" in exporters or bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
                                       or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip())


def check_protocol(env: Mapping[str, str]) -> None:
    """Only OTLP over HTTP with protobuf is shipped (the `otel` extra); grpc asks for a package we do not pin."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = env.get(name, "").strip().lower()
        if value:
            if value != "http/protobuf":
                raise ConfigError(f"{name}={value[:40]} is not supported: traces are exported as OTLP http/protobuf.",
                                  hint=f"Set {name}=http/protobuf (or unset it) and point the endpoint at the "
                                  "collector's HTTP port (4318).", code="otel-protocol")
            return


_Orphan = tuple[list[tuple[str, int, int]], list[tuple[str, str]], "str | None"]


class _Pending:
    """One request's stages, as reported; exported with the request at `call_done`, or handed to `orphans`
    when the context holding it is dropped first."""

    __slots__ = ("errors", "orphans", "stages", "tenant")

    def __init__(self, orphans: collections.deque[_Orphan]) -> None:
        self.stages: list[tuple[str, int, int]] = []
        self.errors: list[tuple[str, str]] = []
        self.tenant: str | None = None
        self.orphans = orphans

    def __del__(self) -> None:
        if self.stages:  # the request ended without call_done (deque.append takes no lock: safe in a finalizer)
            self.orphans.append((self.stages, self.errors, self.tenant))


SHUTDOWN_FLUSH_S = 2.0
"""At shutdown, how long the spans still batched may take to reach the collector."""


class TracingObserver(Observer):
    """Buffers a request's stages, then exports its spans through `provider` at `call_done`."""

    def __init__(self, provider: TracerProvider, *, tenant_label: bool = False,
                 exporter: SpanExporter | None = None) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.provider = provider
        self._exporter = exporter  # stopped first at shutdown when the last flush runs out of time
        self.tenant_label = tenant_label
        self._tracer = provider.get_tracer("aegress.gateway")
        self._trace, self._server, self._error = trace, SpanKind.SERVER, Status(StatusCode.ERROR)
        self._offset = time.time_ns() - time.perf_counter_ns()  # perf_counter_ns -> epoch ns
        self._orphans: collections.deque[_Orphan] = collections.deque(maxlen=MAX_ORPHANS)
        self._pending: contextvars.ContextVar[_Pending | None] = contextvars.ContextVar("aegress_trace_pending",
                                                                                         default=None)

    def _buffer(self) -> _Pending:
        pending = self._pending.get()
        if pending is None:
            if self._orphans:
                self._flush_orphans()
            pending = _Pending(self._orphans)
            self._pending.set(pending)
        return pending

    def stage(self, name: str, start_ns: int, end_ns: int, tenant: str | None = None) -> None:
        pending = self._buffer()
        pending.stages.append((name, start_ns, end_ns))
        if tenant is not None:
            pending.tenant = tenant

    def upstream_error(self, upstream: str, kind: str, tenant: str | None = None) -> None:
        self._buffer().errors.append((upstream, kind))

    def call_done(self, method: str, verdict: str, outcome: str, start_ns: int, end_ns: int,
                  tenant: str | None = None) -> None:
        pending = self._pending.get()
        stages, errors = ([], []) if pending is None else (pending.stages, pending.errors)
        if pending is not None:  # emptied in place: a task started before it was made shares this object
            pending.stages, pending.errors = [], []
            tenant = tenant or pending.tenant
        method = method_label(method)
        attributes: dict[str, Any] = {"mcp.method.name": method, "aegress.verdict": verdict,
                                      "aegress.outcome": outcome}
        self._export(f"mcp {method}", attributes, stages, errors, start_ns, end_ns, tenant,
                     failed=outcome in ("error", "timeout"))
        if self._orphans:
            self._flush_orphans()

    def _flush_orphans(self) -> None:
        while self._orphans:
            try:
                stages, errors, tenant = self._orphans.popleft()
            except IndexError:
                return
            self._export("mcp edge", {"aegress.outcome": "not_dispatched"}, stages, errors,
                         min(s for _, s, _ in stages), max(e for _, _, e in stages), tenant, failed=False)

    def _export(self, name: str, attributes: dict[str, Any], stages: list[tuple[str, int, int]],
                errors: list[tuple[str, str]], start_ns: int, end_ns: int, tenant: str | None, *,
                failed: bool) -> None:
        if tenant is not None and self.tenant_label:
            attributes["aegress.tenant"] = tenant
        if errors:
            attributes["aegress.upstream"] = errors[-1][0]
            attributes["aegress.upstream.error"] = errors[-1][1]
        offset = self._offset
        first = min([start_ns, *(s for _, s, _ in stages)])
        request = self._tracer.start_span(name, kind=self._server, attributes=attributes, start_time=first + offset)
        if not request.is_recording():  # sampled out (OTEL_TRACES_SAMPLER): its stages would be too
            return
        if failed:
            request.set_status(self._error)
        parent = self._trace.set_span_in_context(request)
        for stage, s, e in stages:
            self._tracer.start_span(stage, context=parent, attributes={"aegress.stage": stage},
                                    start_time=s + offset).end(end_time=e + offset)
        request.end(end_time=max(end_ns, first) + offset)

    def shutdown(self, flush_s: float = SHUTDOWN_FLUSH_S) -> None:
        """Export what is buffered for at most `flush_s`, then stop (blocking: call it off the event loop). An
        unreachable collector must not hold a rolling restart: the exporter would keep retrying for its whole
        OTEL_EXPORTER_OTLP_TIMEOUT; stopping it first ends its retries, and the spans still buffered are dropped."""
        self._flush_orphans()
        # the SDK's force_flush exports on the calling thread and ignores its timeout: bound it from here
        if not _within(self.provider.force_flush, flush_s):
            log.warning("the trace collector did not take the last spans within %g s; they are dropped", flush_s)
            if self._exporter is not None:
                self._exporter.shutdown()  # ends its retry back-off (a request in flight runs to its timeout)
        if not _within(self.provider.shutdown, flush_s):
            log.warning("the trace exporter did not stop within %g s; it is left behind", flush_s)


def _within(work: Callable[[], object], seconds: float) -> bool:
    """Run `work` on a daemon thread for at most `seconds`; False if it is still running (left behind)."""
    thread = threading.Thread(target=work, name="aegress-trace-stop", daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()


def provider_for(exporter: SpanExporter, version: str = "unknown", *, batch: bool = True) -> TracerProvider:
    """A tracer provider of our own exporting through `exporter` (batched unless `batch` is False: tests)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create({"service.version": version})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)  # ours is bounded (`shutdown`)
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    return provider


def from_env(env: Mapping[str, str], *, tenant_label: bool = False, version: str = "unknown"
             ) -> TracingObserver | None:
    """A TracingObserver exporting over OTLP/HTTP as `env` says, or None when tracing is not asked for."""
    if not enabled(env):
        return None
    check_protocol(env)
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ConfigError("OTLP tracing is configured but the OpenTelemetry SDK is not installed.",
                          hint="Install the extra (pip install 'aegress[otel]'), or unset OTEL_EXPORTER_OTLP_*.",
                          code="otel-missing") from exc
    exporter = OTLPSpanExporter()
    observer = TracingObserver(provider_for(exporter, version), tenant_label=tenant_label, exporter=exporter)
    log.info("tracing: exporting spans over OTLP/HTTP")
    return observer
