"""End to end through a real `signing-proxy run` subprocess, real clients, a real upstream."""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import trustme
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ProxyProcess, Upstream, running_proxy, running_upstream

pytestmark = pytest.mark.smoke  # also run on the lowest dependency versions (.ci/run)

TOKEN = "tok-e2e-7f3a9c"


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstream() as server:

        async def redirect(request: web.BaseRequest) -> web.Response:
            return web.Response(status=302, headers={"Location": "/elsewhere"})

        async def gzipped(request: web.BaseRequest) -> web.Response:
            body = gzip.compress(b"hello " * 100)
            return web.Response(body=body, headers={"Content-Encoding": "gzip"})

        server.handlers["/base/redirect"] = redirect
        server.handlers["/base/gzip"] = gzipped
        yield server


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Upstream, Path]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with running_upstream(context) as server:
        assert server.url.startswith("https://")
        yield server, ca_file


@pytest.fixture(scope="module")
def proxy(
    upstream: Upstream,
    tls_upstream: tuple[Upstream, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyProcess]:
    tls_server, ca_file = tls_upstream
    bearer = {"scheme": "bearer", "token": {"env": "E2E_TOKEN"}}
    config = {
        "routes": [
            {
                "name": "by-prefix",
                "match": {"path_prefix": "/svc"},
                "upstream": f"{upstream.url}/base",
                "signer": bearer,
                "headers": {"set": {"X-Static": "yes"}, "remove": ["X-Debug"]},
            },
            {
                "name": "by-host",
                "match": {"host": "api.example.test"},
                "upstream": f"{upstream.url}/base",
                "signer": bearer,
            },
            {
                "name": "tls",
                "match": {"host": "secure.example.test"},
                "upstream": tls_server.url,
                "signer": {"scheme": "header", "name": "X-Api-Key", "value": "key-e2e-51d2"},
                "tls": {"ca_file": str(ca_file)},
            },
            {
                "name": "tls-untrusted",
                "match": {"host": "untrusted.example.test"},
                "upstream": tls_server.url,
                "signer": bearer,
            },
        ]
    }
    workdir = tmp_path_factory.mktemp("proxy")
    with running_proxy(config, workdir, env={"E2E_TOKEN": TOKEN}) as process:
        yield process


def _echo(response: requests.Response) -> dict[str, object]:
    assert response.status_code == 200, response.text
    data: dict[str, object] = response.json()
    return data


def _headers(data: dict[str, object]) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in data["headers"]]  # type: ignore[union-attr]


def test_reverse_mode_by_path_prefix(proxy: ProxyProcess) -> None:
    data = _echo(requests.get(f"{proxy.url}/svc/api/awards?page=2", timeout=10))
    assert data["raw_path"] == "/base/api/awards?page=2"
    headers = _headers(data)
    assert ("authorization", f"Bearer {TOKEN}") in headers
    assert ("x-static", "yes") in headers


def test_prefix_matches_on_segment_boundary_only(proxy: ProxyProcess) -> None:
    response = requests.get(f"{proxy.url}/svcx/api", timeout=10)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "no_route"


def test_reverse_mode_by_host_header(proxy: ProxyProcess) -> None:
    response = requests.get(
        f"{proxy.url}/api/x", headers={"Host": "API.Example.test:8080"}, timeout=10
    )
    data = _echo(response)
    assert data["raw_path"] == "/base/api/x"
    assert ("host", f"127.0.0.1:{proxy_upstream_port(data)}") in _headers(data)


def proxy_upstream_port(data: dict[str, object]) -> int:
    host = dict(_headers(data))["host"]
    return int(host.rsplit(":", 1)[1])


def test_forward_mode_with_curl(proxy: ProxyProcess) -> None:
    out = subprocess.run(
        ["curl", "-sS", "-x", proxy.url, "http://api.example.test/api/awards?x=1"],
        capture_output=True,
        check=True,
        timeout=20,
    )
    data = json.loads(out.stdout)
    assert data["raw_path"] == "/base/api/awards?x=1"
    assert ("authorization", f"Bearer {TOKEN}") in _headers(data)


def test_forward_mode_with_http_proxy_env(
    proxy: ProxyProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with requests.Session() as session:  # trust_env: picks HTTP_PROXY up like a legacy app
        data = _echo(session.get("http://api.example.test/v1/items", timeout=10))
    assert data["raw_path"] == "/base/v1/items"
    assert ("authorization", f"Bearer {TOKEN}") in _headers(data)


def test_forward_mode_plain_http_in_tls_upstream_out(
    proxy: ProxyProcess, tls_upstream: tuple[Upstream, Path]
) -> None:
    out = subprocess.run(
        ["curl", "-sS", "-x", proxy.url, "http://secure.example.test/v3/x"],
        capture_output=True,
        check=True,
        timeout=20,
    )
    data = json.loads(out.stdout)
    assert data["raw_path"] == "/v3/x"
    assert ("x-api-key", "key-e2e-51d2") in _headers(data)


def test_untrusted_tls_upstream_is_a_502(proxy: ProxyProcess) -> None:
    response = requests.get(
        f"{proxy.url}/x", headers={"Host": "untrusted.example.test"}, timeout=10
    )
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "upstream_unreachable"
    assert error["route"] == "tls-untrusted"
    assert "certificate" in error["message"].lower()


def test_unrouted_forward_request_is_refused(proxy: ProxyProcess, upstream: Upstream) -> None:
    before = len(upstream.seen)
    for url in ("http://169.254.169.254/latest/meta-data/", "http://localhost/admin"):
        out = subprocess.run(
            ["curl", "-sS", "-x", proxy.url, "-w", "\n%{http_code}", url],
            capture_output=True,
            check=True,
            timeout=20,
        )
        body, code = out.stdout.decode().rsplit("\n", 1)
        assert code == "403"
        assert json.loads(body)["error"]["code"] == "no_route"
    assert len(upstream.seen) == before  # nothing forwarded


def test_connect_is_refused_with_405(proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"CONNECT api.example.test:443 HTTP/1.1\r\nHost: api.example.test:443\r\n\r\n")
        reply = sock.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 405")
    assert "connect_not_supported" in reply


def test_query_and_path_bytes_travel_verbatim(proxy: ProxyProcess) -> None:
    raw = "/svc/a%2Fb/%7Euser?x=%7E&y=a+b&z&q=%E9"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(f"GET {raw} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    data = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert data["raw_path"] == "/base/a%2Fb/%7Euser?x=%7E&y=a+b&z&q=%E9"


def test_hop_by_hop_and_app_credentials_dropped(proxy: ProxyProcess) -> None:
    response = requests.get(
        f"{proxy.url}/svc/h",
        headers={
            "Connection": "keep-alive, X-Conn-Named",
            "X-Conn-Named": "drop me",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic c2VjcmV0",
            "Authorization": "Bearer app-stale-token",
            "X-Debug": "1",
            "X-Kept": "kept",
        },
        timeout=10,
    )
    headers = _headers(_echo(response))
    names = [name for name, _ in headers]
    for dropped in ("x-conn-named", "keep-alive", "te", "proxy-authorization", "x-debug"):
        assert dropped not in names
    assert [v for n, v in headers if n == "authorization"] == [f"Bearer {TOKEN}"]
    assert ("x-kept", "kept") in headers


def test_client_adds_no_headers_of_its_own(proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /svc/bare HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    data = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    names = sorted(name.lower() for name, _ in data["headers"])
    assert names == ["authorization", "host", "x-static"]


def test_redirects_are_passed_back(proxy: ProxyProcess) -> None:
    response = requests.get(f"{proxy.url}/svc/redirect", allow_redirects=False, timeout=10)
    assert response.status_code == 302
    assert response.headers["Location"] == "/elsewhere"


def test_compressed_body_passes_untouched(proxy: ProxyProcess) -> None:
    response = requests.get(f"{proxy.url}/svc/gzip", stream=True, timeout=10)
    raw = response.raw.read(decode_content=False)
    assert response.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(raw) == b"hello " * 100


def test_admin_endpoints(proxy: ProxyProcess) -> None:
    assert requests.get(f"{proxy.admin_url}/healthz", timeout=5).status_code == 200
    assert requests.get(f"{proxy.admin_url}/readyz", timeout=5).status_code == 200
    requests.get(f"{proxy.url}/svc/metrics-probe", timeout=10)
    metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
    assert 'signing_proxy_requests_total{code="200",method="GET",route="by-prefix"}' in metrics
    assert "signing_proxy_build_info{version=" in metrics
    for name in (
        "signing_proxy_request_duration_seconds_bucket",
        "signing_proxy_upstream_duration_seconds_bucket",
        "signing_proxy_in_flight_requests",
        "signing_proxy_request_body_bytes_bucket",
        'signing_proxy_errors_total{code="no_route",route="(none)"}',
    ):
        assert name in metrics, name
    assert "/svc/metrics-probe" not in metrics  # labelled by route, never by URL


def test_access_log_is_json_lines(proxy: ProxyProcess) -> None:
    requests.get(f"{proxy.url}/svc/logged?secret-ish=1", timeout=10)
    access = proxy.request_events(path="/svc/logged")
    assert access, proxy.logs()
    event = access[-1]
    assert event["route"] == "by-prefix"
    assert event["status"] == 200
    assert event["method"] == "GET"
    assert event["upstream"].startswith("127.0.0.1:")
    assert {"duration_ms", "bytes_in", "bytes_out", "error", "timestamp"} <= set(event)


def _parser_refusals(proxy: ProxyProcess) -> float:
    metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(metrics):
        if family.name == "signing_proxy_parser_refusals":
            return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    raise AssertionError("signing_proxy_parser_refusals_total is not exported")


def test_parser_refusals_log_one_line_without_traceback(proxy: ProxyProcess) -> None:
    before = _parser_refusals(proxy)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        # The refused line holds a credential: aiohttp quotes it in its error message.
        sock.sendall(
            b"GET /svc/x HTTP/1.1\r\nHost: h\r\n"
            b"Proxy-Authorization: Bearer tok-REFUSED-77\x01b\r\n\r\n"
        )
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1."), status_line
        assert b" 400 " in status_line, status_line
    deadline = time.monotonic() + 5
    while "refused by the HTTP parser" not in proxy.logs():
        assert time.monotonic() < deadline, proxy.logs()[-2000:]
        time.sleep(0.05)
    lines = [line for line in proxy.logs().splitlines() if "refused by the HTTP parser" in line]
    event = json.loads(lines[-1])
    assert event["level"] == "info"
    assert event["event"] == "request refused by the HTTP parser: Invalid header value char"
    assert "Traceback" not in proxy.logs()
    assert "tok-REFUSED-77" not in proxy.logs()
    assert _parser_refusals(proxy) == before + 1  # counted, though no handler of ours ran


def test_bytes_that_are_not_http_are_counted_as_parser_refusals(proxy: ProxyProcess) -> None:
    # An app that speaks TLS to the plain port: aiohttp logs this one at debug level only.
    before = _parser_refusals(proxy)
    client_hello = bytes.fromhex("16030100a5010000a10303") + bytes(32) + b"\x00\x00\x02\x13\x01"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(client_hello)
        sock.recv(4096)  # aiohttp answers 400 in plain text, or just closes
    deadline = time.monotonic() + 5
    while _parser_refusals(proxy) == before:
        assert time.monotonic() < deadline, proxy.logs()[-2000:]
        time.sleep(0.05)
    assert _parser_refusals(proxy) == before + 1
    assert "Traceback" not in proxy.logs()
