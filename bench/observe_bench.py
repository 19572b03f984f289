"""What observing one tools/call costs the request path (target: a few microseconds in all).

Run: .venv/bin/python bench/observe_bench.py [--calls 200000] [--repeat 5]

One simulated tools/call is what the request path reports for it: six stages (gateway.observe.STAGES), the
answer (`call_done`) and one evidence commit, 8 observer calls. Measured for: NOTHING (the default no-op),
MetricsObserver (Prometheus), TracingObserver (OpenTelemetry SDK, a BatchSpanProcessor into an in-memory
exporter: span creation and queueing, no network), both behind `Observers`, and, for comparison, the same
reports through prometheus-client's own Histogram/Counter children (pre-bound labels cached in a dict).
The tracing run is inside one asyncio task per call, as in the gateway (stages are buffered per context).
Figures are the best of `--repeat` runs, in ns per simulated call.
"""

from __future__ import annotations

import argparse
import contextvars
import time
from collections.abc import Callable

from gateway.metrics import DURATION_BUCKETS_S, MetricsObserver
from gateway.observe import NOTHING, STAGES, Observer, Observers


def simulate(observer: Observer, n: int) -> int:
    """ns spent in `n` simulated tools/calls' reports (timestamps precomputed: only the observer is timed)."""
    stage = observer.stage
    call_done = observer.call_done
    commit = observer.evidence_commit
    t0 = 1_000_000
    spans = [(name, t0 + i * 10_000, t0 + i * 10_000 + 4_000 + i * 1_000) for i, name in enumerate(STAGES)]
    start = time.perf_counter_ns()
    for _ in range(n):
        for name, s, e in spans:
            stage(name, s, e, "acme")
        call_done("tools/call", "allow", "ok", t0, t0 + 80_000, "acme")
        commit(0.0004, 3)
    return time.perf_counter_ns() - start


def simulate_in_tasks(observer: Observer, n: int) -> int:
    """As `simulate`, each call in a fresh context (the gateway runs each request in its own task)."""
    total = 0
    run = contextvars.copy_context
    for _ in range(n):
        ctx = run()
        total += ctx.run(simulate, observer, 1)
    return total


class PrometheusClientObserver(Observer):
    """The same reports through prometheus-client's Histogram and Counter children (for comparison only)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        registry = CollectorRegistry()
        self._stage = Histogram("s_seconds", "s", ["stage"], buckets=DURATION_BUCKETS_S, registry=registry)
        self._request = Histogram("r_seconds", "r", ["method"], buckets=DURATION_BUCKETS_S, registry=registry)
        self._requests = Counter("q", "q", ["method", "verdict", "outcome"], registry=registry)
        self._append = Histogram("a_seconds", "a", registry=registry)
        self._batch = Histogram("b", "b", registry=registry)
        self._stages: dict[str, object] = {}
        self._counts: dict[tuple[str, str, str], object] = {}
        self._methods: dict[str, object] = {}

    def stage(self, name: str, start_ns: int, end_ns: int, tenant: str | None = None) -> None:
        child = self._stages.get(name)
        if child is None:
            child = self._stages[name] = self._stage.labels(name)
        child.observe((end_ns - start_ns) / 1e9)  # type: ignore[attr-defined]

    def call_done(self, method: str, verdict: str, outcome: str, start_ns: int, end_ns: int,
                  tenant: str | None = None) -> None:
        key = (method, verdict, outcome)
        count = self._counts.get(key)
        if count is None:
            count = self._counts[key] = self._requests.labels(*key)
        count.inc()  # type: ignore[attr-defined]
        child = self._methods.get(method)
        if child is None:
            child = self._methods[method] = self._request.labels(method)
        child.observe((end_ns - start_ns) / 1e9)  # type: ignore[attr-defined]

    def evidence_commit(self, seconds: float, batch: int) -> None:
        self._append.observe(seconds)
        self._batch.observe(batch)


def tracing_observer() -> tuple[Observer, Callable[[], None]]:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gateway.tracing import TracingObserver, provider_for

    exporter = InMemorySpanExporter()
    observer = TracingObserver(provider_for(exporter), tenant_label=False)

    def drain() -> None:
        observer.provider.force_flush()
        exporter.clear()

    return observer, drain


def best(fn: Callable[[], int], n: int, repeat: int, between: Callable[[], None] | None = None) -> float:
    runs = []
    for _ in range(repeat):
        runs.append(fn() / n)
        if between is not None:
            between()
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n, repeat = args.calls, args.repeat
    metrics = MetricsObserver()
    tracer, drain = tracing_observer()
    both = Observers([metrics, tracer])
    n_traced = max(1, n // 10)  # span creation is far slower: fewer calls, same per-call figure
    rows = [
        ("NOTHING (no-op)", best(lambda: simulate(NOTHING, n), n, repeat)),
        ("MetricsObserver", best(lambda: simulate(metrics, n), n, repeat)),
        ("prometheus-client children (comparison)", best(lambda: simulate(PrometheusClientObserver(), n), n, repeat)),
        ("TracingObserver (in-memory exporter)", best(lambda: simulate_in_tasks(tracer, n_traced), n_traced, repeat,
                                                      drain)),
        ("Observers([metrics, tracing])", best(lambda: simulate_in_tasks(both, n_traced), n_traced, repeat, drain)),
    ]
    print(f"one simulated tools/call = {len(STAGES)} stages + call_done + evidence_commit "
          f"({len(STAGES) + 2} observer calls); best of {repeat}")
    for name, ns in rows:
        print(f"  {name:<42} {ns:>9.0f} ns/call  ({ns / (len(STAGES) + 2):>6.0f} ns per observer call)")
    tracer.shutdown()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
