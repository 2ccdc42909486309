"""Access control for shared deployments, and per-route limits."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from aiohttp import web

from proxy.access import AccessPolicy
from proxy.admission import is_loopback
from proxy.config import parse_config
from proxy.limits import TokenBucket
from tests.support import ProxyProcess, Upstream, free_port, running_proxy, running_upstream

TOKEN = "proxy-token-6e0b1c"


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstream() as server:

        async def slow(request: web.BaseRequest) -> web.StreamResponse:
            await asyncio.sleep(1.0)
            return await server.echo(request)

        server.handlers["/slow"] = slow
        yield server


def _route(upstream: Upstream, name: str, prefix: str, **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "match": {"path_prefix": prefix},
        "upstream": upstream.url,
        "signer": {"scheme": "bearer", "token": "t"},
        **extra,
    }


def test_client_outside_allowed_networks_is_403(upstream: Upstream, tmp_path: Path) -> None:
    config = {
        "access": {"allow_networks": ["10.0.0.0/8", "192.168.0.0/16"]},
        "routes": [_route(upstream, "a", "/a")],
    }
    before = len(upstream.seen)
    with running_proxy(config, tmp_path) as proxy:
        response = requests.get(f"{proxy.url}/a/x", timeout=10)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "client_not_allowed"
        metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
    assert len(upstream.seen) == before
    assert 'signing_proxy_errors_total{code="client_not_allowed",route="(none)"} 1.0' in metrics


def test_client_inside_allowed_networks_passes(upstream: Upstream, tmp_path: Path) -> None:
    config = {
        "access": {"allow_networks": ["127.0.0.0/8"]},
        "routes": [_route(upstream, "a", "/a")],
    }
    with running_proxy(config, tmp_path) as proxy:
        assert requests.get(f"{proxy.url}/a/x", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def token_proxy(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    config = {
        "access": {"proxy_token": {"env": "PROXY_TOKEN"}},
        "routes": [
            {
                "name": "fwd",
                "match": {"host": "api.example.test"},
                "upstream": upstream.url,
                "signer": {"scheme": "bearer", "token": "t"},
            }
        ],
    }
    workdir = tmp_path_factory.mktemp("token")
    with running_proxy(config, workdir, env={"PROXY_TOKEN": TOKEN}) as proxy:
        yield proxy


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong", "Basic " + base64.b64encode(b"user:wrong").decode(), "Digest x"],
    ids=["missing", "wrong-bearer", "wrong-basic", "other-scheme"],
)
def test_missing_or_wrong_token_is_407(token_proxy: ProxyProcess, header: str | None) -> None:
    headers = {"Proxy-Authorization": header} if header else {}
    response = requests.get(
        "http://api.example.test/x",
        proxies={"http": token_proxy.url},
        headers=headers,
        timeout=10,
    )
    assert response.status_code == 407
    assert "Bearer" in response.headers["Proxy-Authenticate"]
    assert response.json()["error"]["code"] == "proxy_auth_required"
    assert TOKEN not in response.text


def test_bearer_token_passes_and_is_not_forwarded(
    token_proxy: ProxyProcess, upstream: Upstream
) -> None:
    response = requests.get(
        "http://api.example.test/x",
        proxies={"http": token_proxy.url},
        headers={"Proxy-Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 200
    names = {name.lower() for name, _ in response.json()["headers"]}
    assert "proxy-authorization" not in names
    assert TOKEN not in json.dumps(response.json())


def test_basic_token_from_http_proxy_url_passes(token_proxy: ProxyProcess) -> None:
    # What a legacy app does with HTTP_PROXY=http://app:TOKEN@proxy:port
    proxy_url = token_proxy.url.replace("http://", f"http://app:{TOKEN}@")
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-x", proxy_url,
         "http://api.example.test/y"],
        capture_output=True, text=True, check=True, timeout=20,
    )  # fmt: skip
    assert out.stdout == "200"


def test_non_loopback_listener_without_access_warns(upstream: Upstream, tmp_path: Path) -> None:
    config = {"routes": [_route(upstream, "a", "/a")]}
    proxy = ProxyProcess(config, tmp_path)
    proxy.extra_args = ["--listen", f"0.0.0.0:{free_port()}"]  # the last --listen wins
    proxy.start()
    try:
        warnings = [
            json.loads(line)
            for line in proxy.logs().splitlines()
            if line.startswith("{") and '"open_listener"' in line
        ]
    finally:
        proxy.stop()
    assert warnings
    assert warnings[0]["level"] == "warning"


def test_loopback_listener_does_not_warn(upstream: Upstream, tmp_path: Path) -> None:
    with running_proxy({"routes": [_route(upstream, "a", "/a")]}, tmp_path) as proxy:
        assert "open_listener" not in proxy.logs()


def test_max_concurrent_is_503_above(upstream: Upstream, tmp_path: Path) -> None:
    config = {"routes": [_route(upstream, "a", "/a", max_concurrent=2)]}
    with running_proxy(config, tmp_path) as proxy, ThreadPoolExecutor(4) as pool:
        barrier = threading.Barrier(4)

        def call() -> requests.Response:
            barrier.wait()
            return requests.get(f"{proxy.url}/a/slow", timeout=20)

        codes = sorted(r.status_code for r in pool.map(lambda _: call(), range(4)))
        assert codes == [200, 200, 503, 503]
        metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
        assert 'signing_proxy_errors_total{code="concurrency_limited",route="a"} 2.0' in metrics
        assert requests.get(f"{proxy.url}/a/after", timeout=20).status_code == 200


def test_rate_limit_is_429_with_retry_after(upstream: Upstream, tmp_path: Path) -> None:
    config = {
        "routes": [_route(upstream, "a", "/a", rate_limit={"requests_per_second": 0.2, "burst": 2})]
    }
    with running_proxy(config, tmp_path) as proxy:
        codes = [requests.get(f"{proxy.url}/a/x", timeout=10) for _ in range(3)]
        assert [r.status_code for r in codes] == [200, 200, 429]
        assert codes[2].json()["error"]["code"] == "rate_limited"
        assert 1 <= int(codes[2].headers["Retry-After"]) <= 5


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=2)
    bucket._updated = 0.0
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0  # one token came back in half a second
    assert bucket.take(10.0) == 0.0  # refills, but never above burst
    assert bucket.take(10.0) == 0.0
    assert bucket.take(10.0) > 0


def test_access_policy_unit() -> None:
    config = parse_config(
        "access: {allow_networks: ['10.1.0.0/16', '::1/128']}\n"
        "routes: [{name: a, match: {path_prefix: /}, upstream: 'http://x.example.com', "
        "signer: {scheme: bearer, token: t}}]"
    )
    policy = AccessPolicy.from_config(config.access)
    assert policy is not None
    policy.check("10.1.2.3", None)
    policy.check("::ffff:10.1.2.3", None)  # IPv4-mapped
    policy.check("::1", None)
    for bad in ("10.2.0.1", None, "not-an-ip"):
        with pytest.raises(Exception, match="may not use"):
            policy.check(bad, None)
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("10.0.0.1")


def test_access_needs_a_rule() -> None:
    from proxy.config import ConfigError

    with pytest.raises(ConfigError, match="allow_networks and/or proxy_token"):
        parse_config(
            "access: {}\nroutes: [{name: a, match: {path_prefix: /}, "
            "upstream: 'http://x.example.com', signer: {scheme: bearer, token: t}}]"
        )
