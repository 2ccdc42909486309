"""Every error the proxy answers itself: status, JSON body, metric, log event."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import requests
from aiohttp import web

from proxy.signers import Signer, SigningContext, SignResult, UpstreamRequest
from tests.support import (
    ProxyProcess,
    Upstream,
    free_port,
    in_process_proxy,
    route,
    running_proxy,
    running_upstream,
)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstream() as server:

        async def slow(request: web.BaseRequest) -> web.Response:
            await asyncio.sleep(5)
            return web.Response(text="too late")

        server.handlers["/slow"] = slow
        yield server


@pytest.fixture(scope="module")
def proxy(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    devo = {"scheme": "devo", "api_key": "k-err", "api_secret": "s-err-93b1"}
    config = {
        "routes": [
            {
                "name": "dead",
                "match": {"path_prefix": "/dead"},
                "upstream": f"http://127.0.0.1:{free_port()}",
                "signer": {"scheme": "bearer", "token": "t"},
            },
            {
                "name": "slow",
                "match": {"path_prefix": "/slow"},
                "upstream": f"{upstream.url}/slow",
                "signer": {"scheme": "bearer", "token": "t"},
                "timeout": {"connect": 1, "read": 0.5},
            },
            {
                "name": "small",
                "match": {"path_prefix": "/small"},
                "upstream": upstream.url,
                "signer": devo,
                "max_body_bytes": 1024,
            },
        ]
    }
    with running_proxy(config, tmp_path_factory.mktemp("errors")) as process:
        yield process


def _error(response: requests.Response, status: int, code: str, route: str | None) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert error.get("route") == route
    assert error["message"]
    message: str = error["message"]
    return message


def _logged(proxy: ProxyProcess, code: str) -> list[dict[str, object]]:
    return proxy.request_events(error=code)


def test_unreachable_upstream_is_502(proxy: ProxyProcess) -> None:
    message = _error(
        requests.get(f"{proxy.url}/dead/x", timeout=10), 502, "upstream_unreachable", "dead"
    )
    assert "connect" in message
    assert _logged(proxy, "upstream_unreachable")


def test_silent_upstream_is_504_after_route_timeout(proxy: ProxyProcess) -> None:
    _error(requests.get(f"{proxy.url}/slow/x", timeout=10), 504, "upstream_timeout", "slow")
    assert _logged(proxy, "upstream_timeout")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_limit_is_413_and_not_forwarded(
    proxy: ProxyProcess, upstream: Upstream, chunked: bool
) -> None:
    before = len(upstream.seen)
    body = b"z" * 4096
    data = iter([body[:2048], body[2048:]]) if chunked else body
    response = requests.post(f"{proxy.url}/small/x", data=data, timeout=10)
    _error(response, 413, "body_too_large", "small")
    assert len(upstream.seen) == before


def test_body_at_limit_is_signed_and_forwarded(proxy: ProxyProcess, upstream: Upstream) -> None:
    response = requests.post(f"{proxy.url}/small/x", data=b"a" * 1024, timeout=10)
    assert response.status_code == 200
    seen = upstream.seen[-1]
    assert seen.body_len == 1024
    assert "x-logtrust-sign" in {k.lower() for k in seen.headers}


def test_no_route_is_403(proxy: ProxyProcess) -> None:
    message = _error(requests.get(f"{proxy.url}/nowhere", timeout=10), 403, "no_route", None)
    assert "/nowhere" in message


def test_dot_segments_are_refused(proxy: ProxyProcess, upstream: Upstream) -> None:
    import socket

    before = len(upstream.seen)
    for target in ("/small/../dead/x", "/small/%2e%2e/admin", "/small/a/%2E%2E%2Fb"):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 400"), (target, reply)
        assert b'"invalid_target"' in reply
    assert len(upstream.seen) == before


def test_errors_are_counted(proxy: ProxyProcess) -> None:
    requests.get(f"{proxy.url}/dead/again", timeout=10)
    metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
    assert 'signing_proxy_errors_total{code="upstream_unreachable",route="dead"}' in metrics
    assert 'signing_proxy_requests_total{code="502",method="GET",route="dead"}' in metrics


class _BrokenSigner(Signer):
    scheme = "broken"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        raise self.error


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (ValueError("form bodies only"), "form bodies only"),
        (KeyError("internal detail"), None),
    ],
)
async def test_signer_failure_is_500_and_never_forwarded(
    error: Exception, shown: str | None
) -> None:
    with running_upstream() as upstream:
        bearer = {"scheme": "bearer", "token": "t"}
        config = {"routes": [route("b", upstream.url, bearer, match={"path_prefix": "/"})]}
        async with in_process_proxy(config) as proxy:
            proxy.use_signer(_BrokenSigner(error))
            response = await proxy.client.get("/x")
            body = await response.json()
        assert response.status == 500
        assert body["error"]["code"] == "signing_failed"
        assert body["error"]["route"] == "b"
        if shown:
            assert shown in body["error"]["message"]
        else:
            assert "internal detail" not in body["error"]["message"]
        assert upstream.seen == []
