"""The observation seam: the request path reports what happened, metrics and traces listen.

The pipeline and the evidence writer call an `Observer` with timestamps they take anyway
(`time.perf_counter_ns()`); this base class does nothing, so a gateway without metrics or tracing
pays one no-op call per stage. `gateway.metrics` (Prometheus) and `gateway.tracing` (OpenTelemetry)
subclass it; `Observers` fans one report out to several.

Nothing passed here may carry argument values, tokens or secrets: names of methods, stages,
verdicts, outcomes and upstreams only, and the tenant id, which a listener exports only where the
operator allows it.
"""

from __future__ import annotations

from collections.abc import Sequence

STAGES = ("authenticate", "bind", "limit", "decide", "forward", "record")
"""The request path's named stages, in order (docs/pipeline.md)."""


MCP_METHODS = frozenset({
    "initialize", "ping", "server/discover", "subscriptions/listen", "logging/setLevel",
    "tools/list", "tools/call", "resources/list", "resources/templates/list", "resources/read",
    "resources/subscribe", "resources/unsubscribe", "prompts/list", "prompts/get", "completion/complete",
})
"""The methods counted under their own name: `initialize` (the transport answers it) and those of
`gateway.methods.HANDLERS` (a unit test keeps the two equal; a literal here, so this seam imports nothing
of the request path)."""


def mcp_methods() -> frozenset[str]:
    """`MCP_METHODS` (a function for the observers that build their label sets from it)."""
    return MCP_METHODS


def method_label(method: str) -> str:
    """The method as a label value or span name, `other` outside `MCP_METHODS`: a client picks the method
    name, so labels stay bounded."""
    return method if method in MCP_METHODS else "other"


class Observer:
    """Does nothing; subclasses override what they listen to."""

    def stage(self, name: str, start_ns: int, end_ns: int, tenant: str | None = None) -> None:
        """One stage of one request ran from `start_ns` to `end_ns` (perf_counter_ns)."""

    def call_done(self, method: str, verdict: str, outcome: str, start_ns: int, end_ns: int,
                  tenant: str | None = None) -> None:
        """One JSON-RPC request was answered. verdict: allow|review|block|hidden|none;
        outcome: ok|error|refused|not_forwarded|timeout|cancelled."""

    def upstream_error(self, upstream: str, kind: str, tenant: str | None = None) -> None:
        """An upstream failed a call. kind: error|timeout|unavailable."""

    def evidence_commit(self, seconds: float, batch: int) -> None:
        """The evidence writer committed `batch` records in one transaction taking `seconds`."""

    def review_waited(self, seconds: float, tenant: str | None = None) -> None:
        """A held call's hold ended after `seconds`: its review was approved, denied or expired, or the call
        was cancelled or failed while held."""


class Observers(Observer):
    """Several observers behind one; built once at start-up, so the hot path loops over a tuple."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self._all = tuple(observers)

    def stage(self, name: str, start_ns: int, end_ns: int, tenant: str | None = None) -> None:
        for o in self._all:
            o.stage(name, start_ns, end_ns, tenant)

    def call_done(self, method: str, verdict: str, outcome: str, start_ns: int, end_ns: int,
                  tenant: str | None = None) -> None:
        for o in self._all:
            o.call_done(method, verdict, outcome, start_ns, end_ns, tenant)

    def upstream_error(self, upstream: str, kind: str, tenant: str | None = None) -> None:
        for o in self._all:
            o.upstream_error(upstream, kind, tenant)

    def evidence_commit(self, seconds: float, batch: int) -> None:
        for o in self._all:
            o.evidence_commit(seconds, batch)

    def review_waited(self, seconds: float, tenant: str | None = None) -> None:
        for o in self._all:
            o.review_waited(seconds, tenant)


NOTHING = Observer()
"""The default: observes nothing."""
