"""Prometheus metrics, labelled by route name only (never by URL: cardinality stays bounded)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from proxy import __version__
from proxy.exchange import Exchange

NO_ROUTE: Final = "(none)"  # cannot collide with a route name: those match [a-z0-9_-]+
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_BYTE_BUCKETS: Final = tuple(float(4**n) for n in range(3, 16))  # 64 B .. 1 GiB


_MAX_CACHED: Final = 4096


@dataclass(frozen=True, slots=True)
class _RouteChildren:
    duration: Histogram
    upstream: Histogram
    body_in: Histogram
    body_out: Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
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
        self.in_flight = Gauge(
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
        build_info = Gauge(
            "signing_proxy_build_info",
            "The running version.",
            ["version"],
            registry=r,
            multiprocess_mode="max",
        )
        build_info.labels(version=__version__).set(1)
        self._route_children: dict[str, _RouteChildren] = {}
        self._request_counters: dict[tuple[str, str, int], Counter] = {}

    def observe(self, exchange: Exchange, duration: float) -> None:
        route = exchange.route or NO_ROUTE
        children = self._route_children.get(route) or self._children_for(route)
        key = (route, exchange.method, exchange.status)
        counter = self._request_counters.get(key)
        if counter is None:
            method = exchange.method if exchange.method in _METHODS else "OTHER"
            counter = self.requests.labels(route, method, str(exchange.status))
            if len(self._request_counters) < _MAX_CACHED:  # odd methods must not grow it
                self._request_counters[key] = counter
        counter.inc()
        children.duration.observe(duration)
        if exchange.upstream_seconds is not None:
            children.upstream.observe(exchange.upstream_seconds)
        if exchange.error:
            self.errors.labels(route, exchange.error).inc()
        if exchange.route:
            children.body_in.observe(exchange.bytes_in)
            children.body_out.observe(exchange.bytes_out)

    def _children_for(self, route: str) -> _RouteChildren:
        # Looking a labelled child up costs microseconds a request; keep them per route.
        children = _RouteChildren(
            self.request_duration.labels(route),
            self.upstream_duration.labels(route),
            self.request_body_bytes.labels(route),
            self.response_body_bytes.labels(route),
        )
        self._route_children[route] = children
        return children


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
        for result in ("success", "failure"):
            self.reloads.labels(result)


class CredentialMetrics:
    """Refreshes of expiring credentials (AWS default chain, assumed roles), per route."""

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
