"""Prometheus metrics: what the request path reports (gateway.observe), exposed at `/metrics`.

The hot path must cost a few microseconds per call in all (bench/observe_bench.py). prometheus-client's own
`Histogram.observe` takes a lock and walks the buckets (about 1.4 µs on the reference machine, times 8 reports
per tools/call), so `MetricsObserver` keeps plain per-series lists instead: one dict lookup, one bisect on
integer nanosecond bounds, two increments. The event loop thread is the only writer of the request series and
the evidence writer thread the only writer of the evidence series, so no lock is needed; a scrape copies each
list and may see one observation's bucket before its sum, never a bucket count that goes down. The exposition
itself is prometheus-client's (`generate_latest` over a custom collector in a registry of our own, never the
process-global one).

Labels are bounded: methods the gateway does not answer count as `other` (a client picks the method name;
`gateway.observe.method_label`), and the tenant label is added only when the operator turns it on
(`AEGRESS_METRICS_TENANT_LABEL`): one series per tenant and method, verdict and outcome is what a scraper must
then store. Never an argument, token or URL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import platform
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from gateway.errors import AegressError, AuthError, ConfigError, Forbidden, NotFound, ProtocolError, RateLimited
from gateway.observe import Observer, mcp_methods

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from starlette.types import Receive, Scope, Send

    from gateway.config import Limits
    from gateway.store.base import Store

log = logging.getLogger("aegress.metrics")

DURATION_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                      0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Stages take tens of microseconds (decide) to tens of seconds (a slow upstream): the default buckets start at 5 ms."""
REVIEW_BUCKETS_S = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

class _Histogram:
    """Cumulative bucket counts of one family, per label tuple. `observe` is the hot path: integer bounds, a
    bisect, two increments; each series is a list [count per bucket..., +Inf bucket, sum]."""

    __slots__ = ("_bounds", "_scale", "bounds", "series")

    def __init__(self, bounds: Sequence[float], scale: float) -> None:
        self.bounds = tuple(bounds)
        self._scale = scale  # the unit observe() is given, per exposed unit (1e9 for ns -> s)
        self._bounds = tuple(round(b * scale) for b in bounds)
        self.series: dict[object, list[int]] = {}

    def observe(self, key: object, value: int) -> None:
        counts = self.series.get(key)
        if counts is None:
            counts = self.series[key] = [0] * (len(self._bounds) + 2)
        counts[bisect_left(self._bounds, value)] += 1
        counts[-1] += value

    def samples(self) -> Iterator[tuple[object, list[tuple[str, float]], float]]:
        """(key, cumulative buckets as prometheus-client wants them, sum in exposed units) per series."""
        for key, counts in list(self.series.items()):
            snapshot = list(counts)
            running, buckets = 0, []
            for bound, n in zip((*self.bounds, float("inf")), snapshot[:-1], strict=True):
                running += n
                buckets.append((floatToGoString(bound), running))
            yield key, buckets, snapshot[-1] / self._scale


class MetricsObserver(Observer):
    """Listens to the request path and the evidence writer; `registry` holds what `/metrics` exposes.

    `store`: read at scrape time for the review queue depth and the checkpoint age (None: those are left out).
    """

    def __init__(self, *, tenant_label: bool = False, store: Store | None = None, version: str = "unknown",
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.tenant_label = tenant_label
        self.store = store
        self.version = version
        self._clock = clock
        self._methods = mcp_methods()
        self._requests: dict[tuple[str, ...], int] = {}
        self._request_seconds = _Histogram(DURATION_BUCKETS_S, 1e9)
        self._stage_seconds = _Histogram(DURATION_BUCKETS_S, 1e9)
        self._upstream_errors: dict[tuple[str, ...], int] = {}
        self._review_wait = _Histogram(REVIEW_BUCKETS_S, 1e6)  # kept in microseconds
        self._append_seconds = _Histogram(DURATION_BUCKETS_S, 1e6)
        self._batch = _Histogram(BATCH_BUCKETS, 1)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Exposition(self))

    # -- the hot path (event loop thread) ------------------------------------------------------------------
    def stage(self, name: str, start_ns: int, end_ns: int, tenant: str | None = None) -> None:
        self._stage_seconds.observe((name, tenant or "") if self.tenant_label else name, end_ns - start_ns)

    def call_done(self, method: str, verdict: str, outcome: str, start_ns: int, end_ns: int,
                  tenant: str | None = None) -> None:
        if method not in self._methods:
            method = "other"
        key = (method, verdict, outcome, tenant or "") if self.tenant_label else (method, verdict, outcome)
        self._requests[key] = self._requests.get(key, 0) + 1
        self._request_seconds.observe(method, end_ns - start_ns)

    def upstream_error(self, upstream: str, kind: str, tenant: str | None = None) -> None:
        key = (upstream, kind, tenant or "") if self.tenant_label else (upstream, kind)
        self._upstream_errors[key] = self._upstream_errors.get(key, 0) + 1

    def review_waited(self, seconds: float, tenant: str | None = None) -> None:
        self._review_wait.observe(None, round(seconds * 1e6))

    # -- the evidence writer thread ------------------------------------------------------------------------
    def evidence_commit(self, seconds: float, batch: int) -> None:
        self._append_seconds.observe(None, round(seconds * 1e6))
        self._batch.observe(None, batch)

    # -- scrape time ---------------------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        """Every family, built from the counters above and (when a store is given) two store reads."""
        tenant = ["tenant"] if self.tenant_label else []
        info = GaugeMetricFamily("aegress_build_info", "The running gateway's version (always 1).",
                                 labels=["version", "python"])
        info.add_metric([self.version, platform.python_version()], 1)
        yield info
        requests = CounterMetricFamily("aegress_requests", "JSON-RPC requests answered, by method (other: "
                                       "one the gateway does not answer), policy verdict and outcome.",
                                       labels=["method", "verdict", "outcome", *tenant])
        for key, n in list(self._requests.items()):
            requests.add_metric(list(key), n)
        yield requests
        yield _histogram(self._request_seconds, "aegress_request_duration_seconds",
                         "Time from a request's first stage to its answer, by method.", ["method"])
        yield _histogram(self._stage_seconds, "aegress_stage_duration_seconds",
                         "Time spent in each pipeline stage (docs/pipeline.md).", ["stage", *tenant])
        upstream = CounterMetricFamily("aegress_upstream_errors", "Upstream calls that failed, by upstream name "
                                       "and kind (error, timeout, unavailable).",
                                       labels=["upstream", "kind", *tenant])
        for key, n in list(self._upstream_errors.items()):
            upstream.add_metric(list(key), n)
        yield upstream
        yield _histogram(self._review_wait, "aegress_review_wait_seconds",
                         "Time a held call was held: until its review was approved, denied or expired, or "
                         "the call was cancelled or failed.",
                         [])
        yield _histogram(self._append_seconds, "aegress_evidence_append_duration_seconds",
                         "Time one group commit of evidence records took.", [])
        yield _histogram(self._batch, "aegress_evidence_batch_size", "Evidence records per group commit.", [])
        yield from self._store_gauges()

    def _store_gauges(self) -> Iterator[Metric]:
        if self.store is None:
            return
        from gateway.status import evidence_summary

        try:
            pending = self.store.count_held_calls(None, "pending")
            summary = evidence_summary(self.store.evidence_sizes(), self.store.latest_checkpoints(), None,
                                       self._clock())
        except AegressError as exc:  # the store is unavailable: the gauges are left out, the rest still answers
            log.warning("metrics: store read failed: %s", exc.message)
            return
        yield GaugeMetricFamily("aegress_review_queue_depth", "Held calls waiting for a review (all tenants).",
                                value=pending)
        last = summary["last_checkpoint"]
        if last is not None and last["age_s"] is not None:
            yield GaugeMetricFamily("aegress_checkpoint_age_seconds", "Seconds since the newest evidence "
                                    "checkpoint (of any log) was signed; absent before the first one.",
                                    value=last["age_s"])
        yield GaugeMetricFamily("aegress_evidence_awaiting_checkpoint", "Sealed evidence records not yet under "
                                "a signed checkpoint.", value=summary["awaiting_checkpoint"])


def _histogram(hist: _Histogram, name: str, doc: str, labels: list[str]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for key, buckets, total in hist.samples():
        values = [] if key is None else list(key) if isinstance(key, tuple) else [str(key)]
        family.add_metric(values, buckets, total)
    return family


class _Exposition(Collector):
    def __init__(self, observer: MetricsObserver) -> None:
        self._observer = observer

    def collect(self) -> Iterator[Metric]:
        return self._observer.collect()


def exposition(observer: MetricsObserver) -> tuple[bytes, str]:
    """The text exposition of `observer`'s registry and its content type; reads the store (call it off the loop)."""
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(observer.registry), CONTENT_TYPE_LATEST


# -- the /metrics route ------------------------------------------------------------------------------------
METRICS_MODES = ("token", "loopback", "off")
"""token: an operator token (`aegop_...`) as a bearer token; loopback: no token, loopback peers only and never
through a proxy; off: 404."""
FORWARDING_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-real-ip")
"""A request carrying one came through a proxy or tunnel, whose own address is all a loopback check sees."""


def check_metrics_mode(value: str) -> str:
    mode = value.strip().lower()
    if mode not in METRICS_MODES:
        raise ConfigError(f"Unknown metrics mode {value[:40]!r}.", hint="Use token, loopback or off.",
                          code="metrics-mode")
    return mode


def is_loopback(peer: str) -> bool:
    """Pure: whether a socket peer address is a loopback address (IPv4-mapped IPv6 included)."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


class MetricsEndpoint:
    """The ASGI app of `GET /metrics`. Refusals use the gateway's JSON error body (docs/errors.md); failed
    tokens count towards the per-address `--auth-throttle` like the console's."""

    def __init__(self, observer: MetricsObserver | None, mode: str, store: Store, master_key: bytes,
                 allowed_hosts: Callable[[], tuple[str, ...]], limits: Limits) -> None:
        from gateway.console.app import Throttle
        from gateway.operators import operator_key

        self.observer = observer
        self.mode = "off" if observer is None else check_metrics_mode(mode)
        self.store = store
        self._allowed_hosts = allowed_hosts
        self._key = operator_key(master_key)
        self._throttle = Throttle(limits.auth_failures, limits.auth_failure_window_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._check(scope)
            assert self.observer is not None
            body, content_type = await asyncio.to_thread(exposition, self.observer)
        except AegressError as exc:
            await _refuse(send, exc)
            return
        head = scope.get("method") == "HEAD"
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": b"" if head else body})

    async def _check(self, scope: Scope) -> None:
        from gateway.transport import host_allowed

        if self.mode == "off":
            raise NotFound("No metrics here: this gateway serves none (AEGRESS_METRICS=off).",
                           hint="Start it with --metrics token or --metrics loopback.")
        if scope.get("method") not in ("GET", "HEAD"):
            raise ProtocolError("/metrics answers GET only.", http_status=405, code="method-not-allowed")
        headers = dict(scope.get("headers") or ())
        host = headers.get(b"host")
        if not host_allowed(host.decode("latin-1") if host is not None else None, self._allowed_hosts()):
            raise ProtocolError("Invalid Host header.", hint="Scrape the gateway's own address or its --public-url.",
                                http_status=421, code="invalid-host")
        peer = str((scope.get("client") or ("",))[0])
        if self.mode == "loopback":
            if any(name in headers for name in FORWARDING_HEADERS):
                raise Forbidden("Metrics without a token are served to loopback clients only, and this request "
                                "came through a proxy.", hint="Scrape the gateway directly on loopback, or use "
                                "--metrics token with an operator token.", code="metrics-loopback-only")
            if not is_loopback(peer):
                raise Forbidden("Metrics without a token are served to loopback clients only.",
                                hint="Use --metrics token with an operator token.", code="metrics-loopback-only")
            return
        await self._operator(headers, peer)

    async def _operator(self, headers: dict[bytes, bytes], peer: str) -> None:
        """The token first, then the throttle (as the MCP endpoint does): a valid operator token is never
        refused for other callers' failures from the same address; a failure past the limit is a 429."""
        from gateway import operators
        from gateway.console.auth import bearer

        raw = headers.get(b"authorization")
        token = bearer(raw.decode("latin-1") if raw is not None else None)
        if not token:
            if token == "":  # malformed; a missing one (a scraper not yet configured) is not counted
                self._failed(peer)
            raise AuthError("/metrics needs an operator token." if token is None else "Malformed Authorization "
                            "header.", hint="Send Authorization: Bearer <operator token> (`aegress operator "
                            "token issue` prints one).", challenge='Bearer realm="aegress metrics"')
        if operators.looks_like_actor_token(token) or token.count(".") == 2:  # an actor's: ours, or OAuth's JWT
            self._failed(peer)
            raise Forbidden("That is not an operator token: actor and OAuth tokens bind MCP clients and never "
                            "read metrics.", hint="Use an operator token (aegop_...): `aegress operator token "
                            "issue` prints one.", code="metrics-not-operator")
        if await asyncio.to_thread(operators.authenticate, self.store, self._key, token) is None:
            self._failed(peer)
            raise AuthError("The operator token is invalid or revoked.", hint="Issue one with `aegress operator "
                            "token issue`.", code="invalid-token", challenge='Bearer realm="aegress metrics"')

    def _failed(self, peer: str) -> None:
        """Count a failed authentication from `peer`; past the limit, answer 429 instead of the failure."""
        wait = self._throttle.retry_after(peer)
        if wait is not None:
            raise RateLimited("Too many failed authentications from this address.", retry_after=wait,
                              code="auth-throttled")
        self._throttle.fail(peer)


async def _refuse(send: Send, exc: AegressError) -> None:
    from gateway.jsonrpc import dumps, error_from

    body = dumps(error_from(None, exc))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store")]
    challenge = getattr(exc, "challenge", None)
    if challenge:
        headers.append((b"www-authenticate", challenge.encode()))
    if isinstance(exc, RateLimited):
        headers.append((b"retry-after", str(exc.retry_after).encode()))
    if exc.http_status == 405:
        headers.append((b"allow", b"GET, HEAD"))
    await send({"type": "http.response.start", "status": exc.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
