"""`timeout.client_body`: an app that stops sending its request body is answered 408 and its
request goes no further; an app that sends slowly but steadily, and a slow upstream after the
body is in, are never cut."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from aiohttp import web

from tests.support import ProxyProcess, Upstream, running_proxy, running_upstream

IDLE = 1.0  # the routes' client_body, seconds
ARRIVED: list[str] = []  # paths of the requests whose head reached the upstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstream() as server:

        async def slow(request: web.BaseRequest) -> web.StreamResponse:
            await request.read()
            await asyncio.sleep(IDLE * 2)  # longer than client_body, after the body is in
            return web.Response(text="slow and fine")

        async def stalled(request: web.BaseRequest) -> web.StreamResponse:
            ARRIVED.append(request.path)  # at its head, before any of its body
            return await server.echo(request)

        server.handlers["/slow"] = slow
        server.handlers["/stalled"] = stalled
        yield server


@pytest.fixture(scope="module")
def proxy(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    timeout = {"client_body": IDLE}
    config = {
        "routes": [
            {
                "name": "stream",
                "match": {"path_prefix": "/stream"},
                "upstream": upstream.url,
                "signer": {"scheme": "bearer", "token": "client-body-token"},
                "timeout": timeout,
            },
            {
                "name": "signed",
                "match": {"path_prefix": "/signed"},
                "upstream": upstream.url,
                "signer": {"scheme": "devo", "api_key": "k", "api_secret": "client-body-secret"},
                "timeout": timeout,
            },
            {
                "name": "patient",
                "match": {"path_prefix": "/patient"},
                "upstream": upstream.url,
                "signer": {"scheme": "bearer", "token": "client-body-token"},
                "timeout": {"client_body": None},
            },
        ]
    }
    with running_proxy(config, tmp_path_factory.mktemp("client-body")) as process:
        yield process


def _read_response(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """One response of known length, without waiting for the connection to close."""
    data = b""
    while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    assert found, head
    while len(body) < int(found.group(1)) and (chunk := sock.recv(65536)):
        body += chunk
    return int(head.split(b" ")[1]), head, body


def _stall(port: int, path: str, framing: bytes, first: bytes) -> tuple[int, bytes, bytes, float]:
    """Send the head and `first` body bytes, then nothing: (status, head, body, seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=IDLE * 6) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: h\r\n%s\r\n%s" % (path.encode(), framing, first))
        started = time.monotonic()
        status, head, body = _read_response(sock)
        return status, head, body, time.monotonic() - started


@pytest.mark.parametrize("route", ["stream", "signed"])
@pytest.mark.parametrize(
    ("framing", "first"),
    [
        (b"Content-Length: 1000\r\n", b"x" * 10),
        (b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n"),
    ],
    ids=["content-length", "chunked"],
)
def test_a_stalled_body_is_408_after_client_body(
    proxy: ProxyProcess, upstream: Upstream, route: str, framing: bytes, first: bytes
) -> None:
    name = f"/stalled-{route}-{framing[:5].decode().lower()}"
    path = f"/{route}{name}"
    status, head, body, waited = _stall(proxy.port, path, framing, first)
    assert status == 408, (head, body)
    assert json.loads(body)["error"] == {
        "code": "client_body_timeout",
        "message": f"the request body stalled: no byte for {IDLE:g} s",
        "route": route,
    }
    assert b"\r\nConnection: close" in head  # the unread rest of the body ends the connection
    assert IDLE * 0.9 <= waited < IDLE * 4
    (event,) = proxy.request_events(path=path)
    assert event["status"] == 408
    assert event["error"] == "client_body_timeout"
    time.sleep(0.2)
    if route == "signed":  # a body the scheme hashes is never sent half-read, nor unsigned
        assert name not in ARRIVED
    else:  # a streamed body goes as it comes; the upstream never gets a complete request
        assert name in ARRIVED
        assert not any(seen.raw_path == name for seen in upstream.seen)
    metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
    assert f'signing_proxy_errors_total{{code="client_body_timeout",route="{route}"}}' in metrics


def test_a_slow_but_steady_body_is_never_cut(proxy: ProxyProcess) -> None:
    pieces = 6  # a byte every IDLE/2: the whole body takes longer than IDLE, no pause does
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=IDLE * 10) as sock:
        sock.sendall(
            b"POST /signed/steady HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % pieces
        )
        started = time.monotonic()
        for _ in range(pieces):
            time.sleep(IDLE / 2)
            sock.sendall(b"s")
        status, _, body = _read_response(sock)
    assert time.monotonic() - started > IDLE * 2
    assert status == 200, body
    assert json.loads(body)["body_len"] == pieces


def test_a_slow_upstream_after_the_body_is_not_the_clients_timeout(proxy: ProxyProcess) -> None:
    for route in ("stream", "signed"):
        response = requests.post(f"{proxy.url}/{route}/slow", data=b"d" * 100, timeout=10)
        assert response.status_code == 200, response.text
        assert response.text == "slow and fine"


def test_null_disables_it(proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=IDLE * 3) as sock:
        sock.sendall(b"POST /patient/x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab")
        time.sleep(IDLE * 1.5)  # over the other routes' client_body: still waiting for us
        sock.sendall(b"cd")
        status, _, body = _read_response(sock)
    assert status == 200, body
    assert json.loads(body)["body_len"] == 4


def test_default_is_60_seconds(tmp_path: Path) -> None:
    from proxy.config import parse_config

    text = "routes:\n- name: a\n  match: {path_prefix: /}\n  upstream: http://127.0.0.1:1\n"
    text += "  signer: {scheme: bearer, token: t}\n"
    (path := tmp_path / "c.yaml").write_text(text)
    assert parse_config(path.read_text(), str(path)).routes[0].timeout.client_body == 60
