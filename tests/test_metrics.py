"""The request metrics' tallies export exactly what prometheus-client's own updates would."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from proxy.exchange import Exchange
from proxy.metrics import _BYTE_BUCKETS, Metrics

# Bucket bounds exactly, just either side of them, zero, and values past the last bound.
DURATIONS = [0.0, 0.005, 0.0050001, 0.01, 0.3, 0.75, 2.5, 10.0, 10.5, 99.0, 0.0049]
SIZES = [0, 64, 65, 1024, 4096, 4097, 1_048_576, 4**15, 4**15 + 1, 5 * 4**15]


def _exchanges() -> list[tuple[Exchange, float]]:
    result = []
    for i, duration in enumerate(DURATIONS):
        exchange = Exchange("GET" if i % 3 else "POST", "/p", 0.0, route="r", status=200)
        exchange.upstream_seconds = DURATIONS[-1 - i]
        exchange.bytes_in = SIZES[i % len(SIZES)]
        exchange.bytes_out = SIZES[-1 - i % len(SIZES)]
        result.append((exchange, duration))
    refused = Exchange("BREW", "/x", 0.0, status=403, error="no_route")
    result.append((refused, 0.001))
    return result


def _reference() -> bytes:
    """The same observations, made straight on prometheus-client metrics."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)  # for the metric families that are not per request
    registry.unregister(metrics.requests)
    requests = Counter(
        "signing_proxy_requests_total",
        metrics.requests._documentation,
        ["route", "method", "code"],
        registry=registry,
    )

    def same_as(
        ours: Histogram, buckets: tuple[float, ...] = Histogram.DEFAULT_BUCKETS
    ) -> Histogram:
        registry.unregister(ours)
        return Histogram(
            ours._name, ours._documentation, ["route"], registry=registry, buckets=buckets
        )

    duration = same_as(metrics.request_duration)
    upstream = same_as(metrics.upstream_duration)
    body_in = same_as(metrics.request_body_bytes, _BYTE_BUCKETS)
    body_out = same_as(metrics.response_body_bytes, _BYTE_BUCKETS)
    for exchange, seconds in _exchanges():
        route = exchange.route or "(none)"
        method = exchange.method if exchange.method in {"GET", "POST"} else "OTHER"
        requests.labels(route, method, str(exchange.status)).inc()
        for histogram in (upstream, body_in, body_out):
            histogram.labels(route)  # a route's series exist from its first request
        duration.labels(route).observe(seconds)
        if exchange.upstream_seconds is not None:
            upstream.labels(route).observe(exchange.upstream_seconds)
        if exchange.error:
            metrics.errors.labels(route, exchange.error).inc()
        if exchange.route:
            body_in.labels(route).observe(exchange.bytes_in)
            body_out.labels(route).observe(exchange.bytes_out)
    metrics.in_flight_gauge.set(0)
    return generate_latest(registry)


def _families(text: bytes) -> list[str]:
    # The registries register families in different orders: compare sorted lines. `_created`
    # is each series' creation time, different by construction.
    return sorted(line for line in text.decode().splitlines() if "_created" not in line)


def test_synced_tallies_match_prometheus_client_updates() -> None:
    metrics = Metrics()
    for exchange, seconds in _exchanges():
        metrics.observe(exchange, seconds)
    metrics.sync()
    assert _families(generate_latest(metrics.registry)) == _families(_reference())


def test_nothing_is_exported_before_sync_and_nothing_twice_after() -> None:
    metrics = Metrics()
    exchange = Exchange("GET", "/p", 0.0, route="r", status=200)
    metrics.observe(exchange, 0.01)
    sample = 'signing_proxy_requests_total{code="200",method="GET",route="r"}'
    assert f"{sample} 0.0" in generate_latest(metrics.registry).decode()
    metrics.sync()
    metrics.sync()  # a second sync adds nothing
    text = generate_latest(metrics.registry).decode()
    assert f"{sample} 1.0" in text
    assert 'signing_proxy_request_duration_seconds_count{route="r"} 1.0' in text
    assert 'signing_proxy_request_duration_seconds_sum{route="r"} 0.01' in text


def test_in_flight_is_exported_at_sync() -> None:
    metrics = Metrics()
    metrics.in_flight += 3
    metrics.sync()
    assert "signing_proxy_in_flight_requests 3.0" in generate_latest(metrics.registry).decode()


def test_a_worker_syncs_at_the_end_of_the_loop_turn() -> None:
    async def scenario() -> tuple[str, str]:
        metrics = Metrics(sync_each_turn=True)
        metrics.observe(Exchange("GET", "/p", 0.0, route="r", status=200), 0.01)
        metrics.observe(Exchange("GET", "/p", 0.0, route="r", status=200), 0.02)
        before = generate_latest(metrics.registry).decode()
        await asyncio.sleep(0)  # the turn ends
        return before, generate_latest(metrics.registry).decode()

    before, after = asyncio.run(scenario())
    sample = 'signing_proxy_requests_total{code="200",method="GET",route="r"}'
    assert f"{sample} 0.0" in before
    assert f"{sample} 2.0" in after
