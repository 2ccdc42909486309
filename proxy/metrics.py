"""Prometheus metrics, labelled by route name only (never by URL: cardinality stays bounded)."""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from proxy import __version__
from proxy.exchange import Exchange

NO_ROUTE: Final = "(none)"  # cannot collide with a route name: those match [a-z0-9_-]+
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_BYTE_BUCKETS: Final = tuple(float(4**n) for n in range(3, 16))  # 64 B .. 1 GiB


_MAX_CACHED: Final = 4096


class _Tally:
    """One histogram child's observations since the last `sync`: counts per bucket and a sum,
    plain Python numbers. prometheus-client takes a lock per update (and, with `--workers`,
    writes a memory-mapped file); on the request path a list index and two additions do."""

    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)  # ends with +Inf
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        # prometheus-client's rule: the first bucket whose upper bound is >= value.
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def sync(self) -> None:
        counts = self._counts
        if not any(counts):
            return
        # The child's own per-bucket values (not cumulative; exposition sums them), as
        # `Histogram.observe` updates them: there is no public call that adds n at once.
        buckets = self._child._buckets
        for index, count in enumerate(counts):
            if count:
                buckets[index].inc(count)
                counts[index] = 0
        self._child._sum.inc(self._sum)
        self._sum = 0.0


@dataclass(frozen=True, slots=True)
class _RouteTallies:
    duration: _Tally
    upstream: _Tally
    body_in: _Tally
    body_out: _Tally

    def sync(self) -> None:
        for tally in (self.duration, self.upstream, self.body_in, self.body_out):
            tally.sync()


class Metrics:
    """The request metrics. The request path only adds to plain per-route tallies; `sync()`
    moves them into the prometheus-client metrics. A single process syncs before each scrape
    of its admin port. A worker of `--workers N` (`sync_each_turn`) syncs at the end of each
    event-loop turn that finished requests, so its counts are in the shared files, for the
    supervisor's scrape, as soon as the requests are answered: a worker that is killed loses
    none."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, sync_each_turn: bool = False
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "signing_proxy_requests_total",
            "Requests answered, by route, method and HTTP status.",
            ["route", "method", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "signing_proxy_request_duration_seconds",
            "Time from the request's arrival to the end of the response.",
            ["route"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "signing_proxy_upstream_duration_seconds",
            "Time from sending upstream to the upstream's response headers.",
            ["route"],
            registry=r,
        )
        self.errors = Counter(
            "signing_proxy_errors_total",
            "Requests that failed, by route and error code.",
            ["route", "code"],
            registry=r,
        )
        # multiprocess_mode: how `--workers N` combines the workers' values (ignored otherwise).
        self.retries = Counter(
            "signing_proxy_retries_total",
            "Attempts sent again (each signed afresh), by route.",
            ["route"],
            registry=r,
        )
        self.in_flight_gauge = Gauge(
            "signing_proxy_in_flight_requests",
            "Requests being handled now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.request_body_bytes = Histogram(
            "signing_proxy_request_body_bytes",
            "Size of request bodies sent upstream.",
            ["route"],
            buckets=_BYTE_BUCKETS,
            registry=r,
        )
        self.response_body_bytes = Histogram(
            "signing_proxy_response_body_bytes",
            "Size of response bodies sent back to clients.",
            ["route"],
            buckets=_BYTE_BUCKETS,
            registry=r,
        )
        self.parser_refusals = Counter(
            "signing_proxy_parser_refusals_total",
            "Requests the HTTP parser refused (answered 400 before any route was matched).",
            registry=r,
        )
        self.header_timeouts = Counter(
            "signing_proxy_header_timeouts_total",
            "Connections closed for not sending a complete request head within "
            "request_limits.header_timeout.",
            registry=r,
        )
        build_info = Gauge(
            "signing_proxy_build_info",
            "The running version.",
            ["version"],
            registry=r,
            multiprocess_mode="max",
        )
        build_info.labels(version=__version__).set(1)
        self.in_flight = 0  # requests being handled now; the handler counts them
        self._sync_each_turn = sync_each_turn
        self._sync_scheduled = False
        self._routes: dict[str, _RouteTallies] = {}
        # (route, method, status) -> [the counter child, requests since the last sync]
        self._requests: dict[tuple[str, str, int], list[Any]] = {}

    def observe(self, exchange: Exchange, duration: float) -> None:
        route = exchange.route or NO_ROUTE
        tallies = self._routes.get(route) or self._tallies_for(route)
        key = (route, exchange.method, exchange.status)
        pending = self._requests.get(key)
        if pending is not None:
            pending[1] += 1
        else:
            method = exchange.method if exchange.method in _METHODS else "OTHER"
            counter = self.requests.labels(route, method, str(exchange.status))
            if len(self._requests) < _MAX_CACHED:  # odd methods must not grow it
                self._requests[key] = [counter, 1]
            else:
                counter.inc()
        tallies.duration.observe(duration)
        if exchange.upstream_seconds is not None:
            tallies.upstream.observe(exchange.upstream_seconds)
        if exchange.error:
            self.errors.labels(route, exchange.error).inc()
        if exchange.route:
            tallies.body_in.observe(exchange.bytes_in)
            tallies.body_out.observe(exchange.bytes_out)
        if self._sync_each_turn and not self._sync_scheduled:
            self._sync_scheduled = True
            asyncio.get_running_loop().call_soon(self.sync)

    def sync(self) -> None:
        """Move what the request path tallied into the exported metrics."""
        self._sync_scheduled = False
        for pending in self._requests.values():
            if pending[1]:
                pending[0].inc(pending[1])
                pending[1] = 0
        for tallies in self._routes.values():
            tallies.sync()
        self.in_flight_gauge.set(self.in_flight)

    def _tallies_for(self, route: str) -> _RouteTallies:
        tallies = _RouteTallies(
            _Tally(self.request_duration.labels(route)),
            _Tally(self.upstream_duration.labels(route)),
            _Tally(self.request_body_bytes.labels(route)),
            _Tally(self.response_body_bytes.labels(route)),
        )
        self._routes[route] = tallies
        return tallies


class ReloadMetrics:
    """Config reloads; kept apart so the request metrics stay one concern."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.reloads = Counter(
            "signing_proxy_config_reloads_total",
            "Config reloads, by result (success or failure).",
            ["result"],
            registry=registry,
        )
        self.last_success = Gauge(
            "signing_proxy_config_last_reload_success_timestamp_seconds",
            "When the config in use was loaded (Unix time).",
            registry=registry,
            multiprocess_mode="min",  # with workers: the stalest one
        )
        self.last_successful = Gauge(
            "signing_proxy_config_last_reload_successful",
            "Whether the last config load or reload succeeded (1) or failed, the previous "
            "config kept (0).",
            registry=registry,
            multiprocess_mode="livemin",  # with workers: 0 if any worker's last reload failed
        )
        for result in ("success", "failure"):
            self.reloads.labels(result)

    def loaded(self, *, reloaded: bool) -> None:
        """A config was loaded (at start) or reloaded and is now in use."""
        if reloaded:
            self.reloads.labels("success").inc()
        self.last_success.set(time.time())
        self.last_successful.set(1)

    def failed(self) -> None:
        """A reload failed: the previous config stays in use."""
        self.reloads.labels("failure").inc()
        self.last_successful.set(0)


class CredentialMetrics:
    """Expiring credentials per route: refreshes (AWS default chain, assumed roles, OAuth2
    tokens) and client certificates."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.refreshes = Counter(
            "signing_proxy_credential_refresh_total",
            "Credential refreshes, by route and result (success or error).",
            ["route", "result"],
            registry=registry,
        )
        self.expiry = Gauge(
            "signing_proxy_credential_expiry_timestamp_seconds",
            "When the route's current credentials expire (Unix time).",
            ["route"],
            registry=registry,
            multiprocess_mode="livemin",  # with workers: the soonest
        )

        self.client_cert_expiry = Gauge(
            "signing_proxy_client_certificate_expiry_timestamp_seconds",
            "When the route's upstream client certificate (mutual TLS) expires (Unix time).",
            ["route"],
            registry=registry,
            multiprocess_mode="livemin",
        )
        self._client_cert_routes: set[str] = set()

    def set_client_cert_expiries(self, expiries: dict[str, float]) -> None:
        """The routes with a client certificate now, and its expiry (others are removed)."""
        for route in self._client_cert_routes - expiries.keys():
            self.client_cert_expiry.remove(route)
        for route, expiry in expiries.items():
            self.client_cert_expiry.labels(route).set(expiry)
        self._client_cert_routes = set(expiries)

    def callback(self, route: str) -> Callable[[str, float | None], None]:
        def on_refresh(result: str, expiry: float | None) -> None:
            self.refreshes.labels(route, result).inc()
            if expiry is not None:
                self.expiry.labels(route).set(expiry)

        return on_refresh


def worker_ready_gauge(registry: CollectorRegistry) -> Gauge:
    """Each worker's readiness (1 or 0), read by the supervisor of `--workers N`."""
    return Gauge(
        "signing_proxy_worker_ready",
        "Whether this worker has its config and credentials (1) or not (0).",
        registry=registry,
        multiprocess_mode="liveall",
    )


class TunnelMetrics:
    """CONNECT tunnels and HTTPS interception: separate series, so the request metrics of the
    requests inside a tunnel keep their labels."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.opened = Counter(
            "signing_proxy_tunnels_opened_total",
            "CONNECT tunnels answered 200, by route and scheme (http: CONNECT host:80; "
            "https: intercepted).",
            ["route", "scheme"],
            registry=registry,
        )
        self.closed = Counter(
            "signing_proxy_tunnels_closed_total",
            "CONNECT tunnels closed, by route and reason.",
            ["route", "reason"],
            registry=registry,
        )
        self.open = Gauge(
            "signing_proxy_tunnels_open",
            "CONNECT tunnels open now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.handshake_failures = Counter(
            "signing_proxy_tunnel_handshake_failures_total",
            "Intercepted tunnels whose client's TLS handshake failed, by route and reason "
            "(untrusted_certificate, sni_mismatch, timeout, protocol, client_closed, tls_error).",
            ["route", "reason"],
            registry=registry,
        )
        self.leaf_expiry = Gauge(
            "signing_proxy_interception_leaf_expiry_timestamp_seconds",
            "When the host certificate last minted for the route's tunnels expires (Unix time).",
            ["route"],
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.ca_expiry = Gauge(
            "signing_proxy_interception_ca_expiry_timestamp_seconds",
            "When the interception CA's certificate expires (Unix time).",
            registry=registry,
            multiprocess_mode="livemin",
        )
