"""Streaming: large bodies both ways in bounded memory, and server-sent events as they happen."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from aiohttp import web

from tests.support import ProxyProcess, Upstream, running_proxy, running_upstream

MIB = 1024 * 1024
SIZE = 200 * MIB
CHUNK = b"0123456789abcdef" * 4096  # 64 KiB


def _pattern(total: int) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        piece = CHUNK[: total - sent]
        sent += len(piece)
        yield piece


def _sha256(total: int) -> str:
    digest = hashlib.sha256()
    for piece in _pattern(total):
        digest.update(piece)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def sse_gate() -> threading.Event:
    return threading.Event()


@pytest.fixture(scope="module")
def upstream(sse_gate: threading.Event) -> Iterator[Upstream]:
    with running_upstream() as server:

        async def download(request: web.BaseRequest) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = SIZE
            await response.prepare(request)
            for piece in _pattern(SIZE):
                await response.write(piece)
            await response.write_eof()
            return response

        async def events(request: web.BaseRequest) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: first\n\n")
            # The second event waits until the client has seen the first one: if the proxy
            # buffered the stream, the client would never see it and the gate would time out.
            opened = await asyncio.to_thread(sse_gate.wait, 10)
            await response.write(b"data: second\n\n" if opened else b"data: buffered\n\n")
            await response.write_eof()
            return response

        server.handlers["/download"] = download
        server.handlers["/events"] = events
        yield server


@pytest.fixture(scope="module")
def proxy(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    config = {
        "routes": [
            {
                "name": "stream",
                "match": {"path_prefix": "/s"},
                "upstream": upstream.url,
                "signer": {"scheme": "bearer", "token": "streaming-token"},
            }
        ]
    }
    with running_proxy(config, tmp_path_factory.mktemp("stream")) as process:
        yield process


@pytest.mark.slow
def test_200_mib_upload_streams_in_bounded_memory(proxy: ProxyProcess, upstream: Upstream) -> None:
    baseline = proxy.rss_bytes()
    response = requests.post(
        f"{proxy.url}/s/upload",
        data=_pattern(SIZE),  # a generator: sent chunked, never held by the client either
        timeout=120,
    )
    assert response.status_code == 200, response.text
    seen = upstream.seen[-1]
    assert seen.body_len == SIZE
    assert seen.body_sha256 == _sha256(SIZE)
    growth = proxy.peak_rss_bytes() - baseline
    assert growth < 50 * MIB, f"proxy RSS grew by {growth / MIB:.1f} MiB"


@pytest.mark.slow
def test_200_mib_download_streams_in_bounded_memory(proxy: ProxyProcess) -> None:
    baseline = proxy.rss_bytes()
    digest = hashlib.sha256()
    size = 0
    with requests.get(f"{proxy.url}/s/download", stream=True, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["Content-Length"] == str(SIZE)
        for piece in response.iter_content(1 << 16):
            digest.update(piece)
            size += len(piece)
    assert size == SIZE
    assert digest.hexdigest() == _sha256(SIZE)
    growth = proxy.peak_rss_bytes() - baseline
    assert growth < 50 * MIB, f"proxy RSS grew by {growth / MIB:.1f} MiB"


def test_server_sent_events_arrive_one_at_a_time(
    proxy: ProxyProcess, sse_gate: threading.Event
) -> None:
    with requests.get(f"{proxy.url}/s/events", stream=True, timeout=30) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        lines = response.iter_lines()
        first = next(line for line in lines if line)
        assert first == b"data: first"
        sse_gate.set()
        second = next(line for line in lines if line)
    assert second == b"data: second"


def test_upload_with_content_length_is_not_rechunked(
    proxy: ProxyProcess, upstream: Upstream, tmp_path: Path
) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"x" * (3 * MIB))
    with payload.open("rb") as body:
        response = requests.put(f"{proxy.url}/s/put", data=body, timeout=60)
    assert response.status_code == 200
    seen = upstream.seen[-1]
    assert seen.headers.get("Content-Length") == str(3 * MIB)
    assert "Transfer-Encoding" not in seen.headers
    assert seen.body_len == 3 * MIB


def test_expect_100_continue_is_answered(proxy: ProxyProcess, upstream: Upstream) -> None:
    body = b"y" * (2 * MIB)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            b"POST /s/expect HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        )
        interim = sock.recv(64)  # a client waits for this before it sends the body
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert b"HTTP/1.1 200" in reply
    assert upstream.seen[-1].body_len == len(body)
    assert "Expect" not in upstream.seen[-1].headers
