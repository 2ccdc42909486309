"""Retries that re-sign every attempt, and the clock-skew check."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web

from tests.support import ProxyProcess, Upstream, free_port, running_proxy, running_upstream
from tests.verifiers.devengo import verify_devengo
from tests.verifiers.devo import verify_devo

DEVENGO = {"api_key_id": "retry-id", "secret": "retry-secret-1a2b"}
DEVO = {"api_key": "retry-key", "api_secret": "retry-devo-secret"}
FAST = {"backoff_initial": 0.01, "backoff_max": 0.05}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstream() as server:
        failures: dict[str, int] = {}

        async def flaky(request: web.BaseRequest) -> web.StreamResponse:
            """Fails `?fail=N` times per `?key=K` with `?status=S`, then echoes."""
            key = request.query["key"]
            seen = failures.get(key, 0)
            failures[key] = seen + 1
            if seen < int(request.query["fail"]):
                await server.record(request)
                return web.Response(status=int(request.query.get("status", "503")), text="busy")
            return await server.echo(request)

        async def skewed(request: web.BaseRequest) -> web.Response:
            date = formatdate(time.time() - 120, usegmt=True)  # two minutes behind us
            return web.Response(text="ok", headers={"Date": date})

        server.handlers["/flaky"] = flaky
        server.handlers["/skewed"] = skewed
        yield server


def _route(name: str, prefix: str, upstream: str, signer: dict[str, Any], **extra: Any) -> Any:
    return {
        "name": name,
        "match": {"path_prefix": prefix},
        "upstream": upstream,
        "signer": signer,
        **extra,
    }


@pytest.fixture(scope="module")
def proxy(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    retries = {"attempts": 3, **FAST}
    config = {
        "routes": [
            _route("devengo", "/devengo", upstream.url, {"scheme": "devengo", **DEVENGO},
                   retries=retries),
            _route("devo-post", "/devo-post", upstream.url, {"scheme": "devo", **DEVO},
                   retries={**retries, "methods": ["POST"]}),
            _route("devo-default", "/devo-default", upstream.url, {"scheme": "devo", **DEVO},
                   retries=retries),
            _route("stream", "/stream", upstream.url, {"scheme": "bearer", "token": "t"},
                   retries=retries),
            _route("dead", "/dead", f"http://127.0.0.1:{free_port()}",
                   {"scheme": "bearer", "token": "t"}, retries=retries),
            _route("plain", "/plain", upstream.url, {"scheme": "bearer", "token": "t"}),
        ]
    }  # fmt: skip
    with running_proxy(config, tmp_path_factory.mktemp("retries")) as process:
        yield process


def _metric(proxy: ProxyProcess, route: str) -> float:
    text = requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
    found = re.search(rf'signing_proxy_retries_total\{{route="{route}"\}} ([0-9.]+)', text)
    return float(found.group(1)) if found else 0.0


def _attempts(upstream: Upstream, key: str) -> list[Any]:
    return [s for s in upstream.seen if f"key={key}" in s.raw_path]


def test_each_attempt_is_signed_afresh(proxy: ProxyProcess, upstream: Upstream) -> None:
    response = requests.get(f"{proxy.url}/devengo/flaky?key=a&fail=2", timeout=10)
    assert response.status_code == 200
    attempts = _attempts(upstream, "a")
    assert len(attempts) == 3
    nonces = {a.headers["X-Devengo-Api-Key-Nonce"] for a in attempts}
    assert len(nonces) == 3  # a new nonce every time
    for attempt in attempts:
        assert verify_devengo(attempt.header_items, b"", DEVENGO["api_key_id"], DEVENGO["secret"])
    assert _metric(proxy, "devengo") == 2


def test_post_is_retried_only_where_allowed_and_replays_the_body(
    proxy: ProxyProcess, upstream: Upstream
) -> None:
    body = json.dumps({"amount": 10}).encode()
    response = requests.post(f"{proxy.url}/devo-post/flaky?key=b&fail=1", data=body, timeout=10)
    assert response.status_code == 200
    attempts = _attempts(upstream, "b")
    assert [a.body for a in attempts] == [body, body]
    for attempt in attempts:  # each attempt carries its own valid signature
        assert verify_devo(attempt.headers, body, DEVO["api_key"], DEVO["api_secret"])

    response = requests.post(f"{proxy.url}/devo-default/flaky?key=c&fail=1", data=body, timeout=10)
    assert response.status_code == 503  # POST is not idempotent: not retried by default
    assert len(_attempts(upstream, "c")) == 1


def test_streamed_body_is_never_retried(proxy: ProxyProcess, upstream: Upstream) -> None:
    # PUT is idempotent, but a body that streamed past the proxy cannot be sent again.
    response = requests.put(
        f"{proxy.url}/stream/flaky?key=d&fail=1", data=iter([b"part1", b"part2"]), timeout=10
    )
    assert response.status_code == 503
    assert len(_attempts(upstream, "d")) == 1


def test_last_status_is_relayed_when_attempts_run_out(
    proxy: ProxyProcess, upstream: Upstream
) -> None:
    response = requests.get(f"{proxy.url}/devengo/flaky?key=e&fail=9&status=502", timeout=10)
    assert response.status_code == 502
    assert response.text == "busy"  # the upstream's own answer, not the proxy's
    assert len(_attempts(upstream, "e")) == 3


def test_connect_errors_are_retried(proxy: ProxyProcess) -> None:
    before = _metric(proxy, "dead")
    response = requests.get(f"{proxy.url}/dead/x", timeout=10)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"
    assert _metric(proxy, "dead") - before == 2


def test_routes_without_retries_do_not_retry(proxy: ProxyProcess, upstream: Upstream) -> None:
    response = requests.get(f"{proxy.url}/plain/flaky?key=f&fail=1", timeout=10)
    assert response.status_code == 503
    assert len(_attempts(upstream, "f")) == 1


def test_clock_skew_is_measured_and_warned(proxy: ProxyProcess) -> None:
    assert requests.get(f"{proxy.url}/plain/skewed", timeout=10).status_code == 200
    text = requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
    found = re.search(r'signing_proxy_clock_skew_seconds\{route="plain"\} ([0-9.-]+)', text)
    assert found
    assert 118 <= float(found.group(1)) <= 122
    warnings = [json.loads(line) for line in proxy.logs().splitlines() if '"clock_skew"' in line]
    assert warnings
    assert warnings[0]["route"] == "plain"
    assert warnings[0]["level"] == "warning"


def test_retries_config_is_validated(tmp_path: Path) -> None:
    from proxy.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"routes\[0\]\.retries\.attempts"):
        parse_config(
            "routes: [{name: a, match: {path_prefix: /}, upstream: 'http://x.example.com', "
            "signer: {scheme: bearer, token: t}, retries: {attempts: 0}}]"
        )
    with pytest.raises(ConfigError, match=r"routes\[0\]\.retries\.on\[0\]"):
        parse_config(
            "routes: [{name: a, match: {path_prefix: /}, upstream: 'http://x.example.com', "
            "signer: {scheme: bearer, token: t}, retries: {attempts: 2, on: [500]}}]"
        )
