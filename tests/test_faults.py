"""Faults on both sides of the proxy: upstreams that refuse, stall, reset, break off mid-body or
speak broken HTTP (raw sockets, where aiohttp cannot misbehave enough), slow clients, clients
that leave mid-exchange, and a thousand such aborts without a leak. All on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from aiohttp import web

from proxy.config import parse_config
from proxy.server import ProxyServer
from tests.support import (
    Behaviour,
    ProxyProcess,
    ScriptedUpstream,
    Upstream,
    free_port,
    running_proxy,
    running_upstream,
)

MIB = 1024 * 1024
BEARER = {"scheme": "bearer", "token": "faults-token"}


def _reply(data: bytes) -> Behaviour:
    def behaviour(server: ScriptedUpstream, conn: socket.socket, head: bytes) -> None:
        conn.sendall(data)
        time.sleep(0.2)

    return behaviour


def _silent(server: ScriptedUpstream, conn: socket.socket, head: bytes) -> None:
    _wait_for_close(server, conn)


def _reset(server: ScriptedUpstream, conn: socket.socket, head: bytes) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST


def _cut(head_bytes: bytes, body: bytes) -> Behaviour:
    def behaviour(server: ScriptedUpstream, conn: socket.socket, head: bytes) -> None:
        conn.sendall(head_bytes)
        time.sleep(0.1)  # the proxy has sent the client its status line by now
        conn.sendall(body)
        time.sleep(0.1)

    return behaviour


def _stall_mid_body(server: ScriptedUpstream, conn: socket.socket, head: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"s" * 1000)
    _wait_for_close(server, conn)


def _wait_for_close(server: ScriptedUpstream, conn: socket.socket) -> None:
    """Say nothing; report when the proxy closes the connection."""
    try:
        data = conn.recv(1)
    except OSError:
        data = b""
    server.events.put(("closed" if not data else "data", time.monotonic()))


def _firehose(server: ScriptedUpstream, conn: socket.socket, head: bytes) -> None:
    """An endless download: report when writing fails (the proxy dropped the connection)."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n")
    chunk = b"f" * 65536
    try:
        while True:
            conn.sendall(chunk)
    except OSError:
        server.events.put(("write_failed", time.monotonic()))


def _sink(server: ScriptedUpstream, conn: socket.socket, head: bytes) -> None:
    """Read the request body; report when the connection ends before it is complete."""
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass
    server.events.put(("closed", time.monotonic()))


# Upstream replies the proxy must answer with 502 upstream_bad_response, before any byte of a
# response reached the client.
BAD_REPLIES: dict[str, bytes] = {
    "not-http": b"this is not http\r\n\r\n",
    "bad-status-code": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    "four-digit-status": b"HTTP/1.1 1000 Odd\r\nContent-Length: 2\r\n\r\nok",
    "two-digit-status": b"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok",
    "status-600": b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok",
    "unsolicited-101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nraw",
    "nul-in-header": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "control-char-in-header": b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 2\r\n\r\nok",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
    "content-length-and-chunked": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    ),
    "duplicate-content-length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"
    ),
    "header-over-8190-bytes": b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n",
    "closed-without-reply": b"",
}
# Valid replies that lack headers aiohttp would add on its own: relayed with the upstream's
# headers and no others (only Date is added where missing, as RFC 9110 6.6.1 asks).
BARE_BODY = b"b" * 100_000  # over SMALL_RESPONSE: streamed, not answered in one piece
BARE_REPLIES: dict[str, bytes] = {
    "small": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhello",
    "streamed": b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nX-Up: 1\r\n\r\n" + BARE_BODY,
    "chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    ),
}
CUTS: dict[str, tuple[bytes, bytes]] = {
    "content-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n", b"c" * 65536),
    "chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"10000\r\n" + b"c" * 65536 + b"\r\n",
    ),
    "bad-chunk-size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"4\r\ncccc\r\nzz\r\n",
    ),
}


# `timeout.read` bounds these: a silent upstream, a stalled body, and a broken chunk framing,
# whose error aiohttp's C parser loses (the body stream would otherwise wait forever).
_READ_TIMEOUT: dict[str, Any] = {"timeout": {"read": 0.5}}
_QUICK = {"silent", "stall", *(f"cut-{name}" for name in CUTS)}


@pytest.fixture(scope="module")
def raw_upstreams() -> Iterator[dict[str, ScriptedUpstream]]:
    servers = {
        "silent": ScriptedUpstream(_silent),
        "reset": ScriptedUpstream(_reset),
        "stall": ScriptedUpstream(_stall_mid_body),
        "firehose": ScriptedUpstream(_firehose),
        "sink": ScriptedUpstream(_sink),
        "hold": ScriptedUpstream(lambda server, conn, head: _wait_for_close(server, conn)),
    }
    servers |= {
        f"bad-{name}": ScriptedUpstream(_reply(reply)) for name, reply in BAD_REPLIES.items()
    }
    servers |= {f"cut-{name}": ScriptedUpstream(_cut(*parts)) for name, parts in CUTS.items()}
    servers |= {
        f"bare-{name}": ScriptedUpstream(_reply(reply)) for name, reply in BARE_REPLIES.items()
    }
    servers["dressed"] = ScriptedUpstream(
        _reply(
            b"HTTP/1.1 200 OK\r\nServer: vendor-gw/2\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        )
    )
    # A small response is read whole before anything reaches the client: cut short, it is a 502.
    servers["short"] = ScriptedUpstream(
        _cut(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b"s" * 100)
    )
    yield servers
    for server in servers.values():
        server.close()


DOWNLOAD_PROGRESS = {"sent": 0}  # bytes the big upstream's current download has written


@pytest.fixture(scope="module")
def big_upstream() -> Iterator[Upstream]:
    with running_upstream() as server:

        async def download(request: web.BaseRequest) -> web.StreamResponse:
            size = int(request.query.get("size", str(100 * MIB)))
            response = web.StreamResponse()
            response.content_length = size
            await response.prepare(request)
            chunk = b"d" * (256 * 1024)
            sent = 0
            with contextlib.suppress(ConnectionError):
                while sent < size:
                    piece = chunk[: size - sent]
                    await response.write(piece)
                    sent += len(piece)
                    DOWNLOAD_PROGRESS["sent"] = sent
                await response.write_eof()
            return response

        async def sink(request: web.BaseRequest) -> web.Response:
            with contextlib.suppress(Exception):
                async for _ in request.content.iter_chunked(65536):
                    pass
            return web.Response(text="ok")

        server.handlers["/download"] = download
        server.handlers["/sink"] = sink
        yield server


def _route(name: str, upstream: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "match": {"path_prefix": f"/{name}"}, "upstream": upstream,
            "signer": BEARER, **extra}  # fmt: skip


@pytest.fixture(scope="module")
def proxy(
    raw_upstreams: dict[str, ScriptedUpstream],
    big_upstream: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyProcess]:
    routes = [
        _route(name, server.url, **_READ_TIMEOUT if name in _QUICK else {})
        for name, server in raw_upstreams.items()
    ]
    routes += [
        _route("dead", f"http://127.0.0.1:{free_port()}"),
        _route("big", big_upstream.url),
        {
            "name": "dr",
            "match": {"path_prefix": "/dr"},
            "upstream": raw_upstreams["bad-not-http"].url,
            "signer": {"scheme": "devresults", "token": "dr-token", "secret": "dr-secret-f00d"},
        },
        {
            "name": "aws",
            "match": {"path_prefix": "/aws"},
            "upstream": raw_upstreams["bad-not-http"].url,
            "signer": {
                "scheme": "aws-sigv4",
                "service": "s3",
                "region": "us-east-1",
                "access_key_id": "AKIDFAULTS",
                "secret_access_key": "faults-secret-key",
                "session_token": "faults-session-token-5ec7e7",
                "presign_expires": 60,
            },
        },
    ]
    with running_proxy({"routes": routes}, tmp_path_factory.mktemp("faults")) as process:
        yield process


def _error(response: requests.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    message: str = error["message"]
    return message


def _logged(proxy: ProxyProcess, path: str, timeout: float = 5) -> dict[str, Any]:
    found = proxy.request_events(timeout, path=path)
    assert found, f"no request event for {path}"
    return found[-1]


def _unique(prefix: str) -> str:
    return f"/{prefix}/{uuid.uuid4().hex}"


def _serves(proxy: ProxyProcess) -> None:
    response = requests.get(f"{proxy.url}/big/download?size=10", timeout=10)
    assert response.status_code == 200
    assert response.content == b"d" * 10


# -- errors before the response starts -----------------------------------------------------------


def test_connection_refused_is_502_unreachable(proxy: ProxyProcess) -> None:
    message = _error(requests.get(f"{proxy.url}/dead/x", timeout=10), 502, "upstream_unreachable")
    assert "connect" in message


def test_silent_upstream_is_504_after_the_read_timeout(
    proxy: ProxyProcess, raw_upstreams: dict[str, ScriptedUpstream]
) -> None:
    silent = raw_upstreams["silent"]
    silent.drain_events()
    started = time.monotonic()
    response = requests.get(f"{proxy.url}/silent/x", timeout=10)
    elapsed = time.monotonic() - started
    _error(response, 504, "upstream_timeout")
    assert 0.45 <= elapsed < 5, elapsed  # timeout: {read: 0.5}
    # ...and the proxy let go of the upstream connection: it is not kept for reuse.
    what, when = silent.events.get(timeout=5)
    assert what == "closed"
    assert when - started < 5


def test_reset_before_headers_is_502(proxy: ProxyProcess) -> None:
    _error(requests.get(f"{proxy.url}/reset/x", timeout=10), 502, "upstream_bad_response")
    _serves(proxy)


@pytest.mark.parametrize("name", list(BARE_REPLIES))
def test_response_keeps_the_upstreams_headers_and_gains_only_date(
    proxy: ProxyProcess, name: str
) -> None:
    response = requests.get(f"{proxy.url}/bare-{name}/x", timeout=10)
    assert response.status_code == 200
    assert response.content == (BARE_BODY if name == "streamed" else b"hello")
    assert response.headers["X-Up"] == "1"
    assert "Content-Type" not in response.headers  # untyped stays untyped
    assert "Server" not in response.headers  # no Python/aiohttp version banner
    assert "Date" in response.headers


def test_response_headers_aiohttp_would_add_are_the_upstreams_when_sent(
    proxy: ProxyProcess,
) -> None:
    response = requests.get(f"{proxy.url}/dressed/x", timeout=10)
    assert response.headers["Server"] == "vendor-gw/2"
    assert response.headers["Date"] == "Tue, 01 Dec 2026 10:00:00 GMT"
    assert response.headers["Content-Type"] == "application/json"


def test_the_proxys_own_answers_carry_no_version_banner(proxy: ProxyProcess) -> None:
    response = requests.get(f"{proxy.url}/no-such-route/x", timeout=10)
    assert response.status_code == 403
    assert response.headers["Content-Type"] == "application/json"
    assert "Server" not in response.headers


@pytest.mark.parametrize("name", list(BAD_REPLIES))
def test_invalid_http_from_the_upstream_is_502(proxy: ProxyProcess, name: str) -> None:
    response = requests.get(f"{proxy.url}/bad-{name}/x", timeout=10)
    _error(response, 502, "upstream_bad_response")
    _serves(proxy)


@pytest.mark.parametrize("route", ["dr", "aws"])
def test_502_message_never_shows_the_signed_url(proxy: ProxyProcess, route: str) -> None:
    """The upstream URL carries the signature (and, presigning AWS, the session token)."""
    message = _error(
        requests.get(f"{proxy.url}/{route}/x?q=1", timeout=10), 502, "upstream_bad_response"
    )
    for leaked in ("faults-session-token-5ec7e7", "X-Amz-Signature", "&s=", "ms=", "?q=1"):
        assert leaked not in message, message


# -- failures after the response started ---------------------------------------------------------


@pytest.mark.parametrize("name", list(CUTS))
def test_body_cut_off_is_an_aborted_response_for_curl(proxy: ProxyProcess, name: str) -> None:
    result = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"{proxy.url}/cut-{name}/x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # 18: "transfer closed with outstanding read data remaining"; 56: failure receiving data.
    assert result.returncode in {18, 56}, (result.returncode, result.stderr)
    assert result.stdout == "200"
    _serves(proxy)


@pytest.mark.parametrize("name", list(CUTS))
def test_body_cut_off_is_an_aborted_response_for_requests(proxy: ProxyProcess, name: str) -> None:
    path = _unique(f"cut-{name}")
    with requests.get(f"{proxy.url}{path}", stream=True, timeout=10) as response:
        assert response.status_code == 200
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            _ = response.content
    event = _logged(proxy, path)
    assert event["aborted"] is True
    assert event["error"] == "upstream_aborted"


def test_small_body_cut_off_is_a_clean_502(proxy: ProxyProcess) -> None:
    response = requests.get(f"{proxy.url}/short/x", timeout=10)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_bad_response"
    _serves(proxy)


def test_upstream_stalling_mid_body_aborts_after_the_read_timeout(
    proxy: ProxyProcess, raw_upstreams: dict[str, ScriptedUpstream]
) -> None:
    stall = raw_upstreams["stall"]
    stall.drain_events()
    started = time.monotonic()
    result = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", f"{proxy.url}/stall/x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 18, result.stderr
    assert time.monotonic() - started < 5
    what, _ = stall.events.get(timeout=5)  # the proxy dropped the upstream connection
    assert what == "closed"


# -- clients --------------------------------------------------------------------------------------


def test_slow_client_reading_100_mib_keeps_the_proxy_rss_bounded(
    proxy: ProxyProcess, big_upstream: Upstream
) -> None:
    """Backpressure, not buffering: while the client does not read, the upstream is held back,
    and the proxy's memory stays far below the body size."""
    size = 100 * MIB
    baseline = proxy.rss_bytes()
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                peak = max(peak, proxy.rss_bytes())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    DOWNLOAD_PROGRESS["sent"] = 0
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # before connect: small window
    try:
        sock.settimeout(20)
        sock.connect(("127.0.0.1", proxy.port))
        sock.sendall(b"GET /big/download HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        time.sleep(1.5)  # not reading at all: an unbounded proxy would take the whole body now
        held_back = DOWNLOAD_PROGRESS["sent"]
        received = 0
        reads = 0
        while chunk := sock.recv(65536):
            received += len(chunk)
            reads += 1
            if reads % 256 == 0:
                time.sleep(0.02)  # a slow reader, pausing now and then
    finally:
        sock.close()
        stop.set()
        sampler.join(5)
    head_size = received - size
    assert 0 < head_size < 1024, received  # the whole body arrived, after a small head
    assert held_back < 40 * MIB, f"upstream wrote {held_back / MIB:.1f} MiB unread"
    growth = peak - baseline
    assert growth < 30 * MIB, f"proxy RSS grew by {growth / MIB:.1f} MiB"


def _abort_mid_upload(port: int, path: str, chunked: bool) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if chunked:
            head = f"POST {path} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            body = b"10000\r\n" + b"u" * 65536 + b"\r\n"
        else:
            head = f"POST {path} HTTP/1.1\r\nHost: h\r\nContent-Length: 100000000\r\n\r\n"
            body = b"u" * MIB
        sock.sendall(head.encode() + body)
        time.sleep(0.3)  # the proxy is streaming the body upstream


def _abort_mid_download(port: int, path: str) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        received = 0
        while received < MIB:
            chunk = sock.recv(65536)
            assert chunk, "the proxy closed early"
            received += len(chunk)


def _abort_awaiting_headers(port: int, path: str) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        time.sleep(0.3)


DISCONNECTS: dict[str, tuple[str, Callable[[int, str], None], str]] = {
    "mid-upload": ("sink", lambda port, path: _abort_mid_upload(port, path, False), "closed"),
    "mid-upload-chunked": (
        "sink",
        lambda port, path: _abort_mid_upload(port, path, True),
        "closed",
    ),
    "mid-download": ("firehose", _abort_mid_download, "write_failed"),
    "awaiting-headers": ("hold", _abort_awaiting_headers, "closed"),
}


@pytest.mark.parametrize("case", list(DISCONNECTS))
def test_client_disconnect_cancels_the_upstream_request(
    proxy: ProxyProcess, raw_upstreams: dict[str, ScriptedUpstream], case: str
) -> None:
    name, abort, observed = DISCONNECTS[case]
    upstream = raw_upstreams[name]
    upstream.drain_events()
    path = _unique(name)
    abort(proxy.port, path)
    left = time.monotonic()
    what, when = upstream.events.get(timeout=10)
    assert what == observed
    assert when - left < 3, f"the upstream noticed {when - left:.1f} s after the client left"
    event = _logged(proxy, path)
    assert event["error"] == "client_closed", event  # the client's doing, not the upstream's
    _serves(proxy)


def test_aborted_responses_log_no_traceback(
    proxy: ProxyProcess, raw_upstreams: dict[str, ScriptedUpstream]
) -> None:
    raw_upstreams["firehose"].drain_events()
    _abort_mid_download(proxy.port, _unique("firehose"))
    with (
        requests.get(f"{proxy.url}{_unique('cut-chunked')}", stream=True, timeout=10) as r,
        pytest.raises(requests.exceptions.ChunkedEncodingError),
    ):
        _ = r.content
    raw_upstreams["firehose"].events.get(timeout=10)
    time.sleep(0.3)
    assert "Error handling request" not in proxy.logs()


# -- a thousand aborts ----------------------------------------------------------------------------

ABORTS = 1000
CONCURRENCY = 20


async def _abort_once(port: int, index: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if index % 2:
            writer.write(b"GET /big/download?size=1073741824 HTTP/1.1\r\nHost: h\r\n\r\n")
            received = 0
            while received < 128 * 1024:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                received += len(chunk)
        else:
            writer.write(
                b"POST /big/sink HTTP/1.1\r\nHost: h\r\nContent-Length: 1073741824\r\n\r\n"
                + b"u" * (256 * 1024)
            )
            await writer.drain()
            await asyncio.sleep(0.005)
    finally:
        if index % 4 < 2:
            writer.transport.abort()  # RST
        else:
            writer.close()  # FIN
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _abort_many(port: int, count: int) -> None:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(index: int) -> None:
        async with limit:
            await _abort_once(port, index)

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), 60)


def _fds(pid: int | str) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _settle(measure: Callable[[], int], ok: Callable[[int], bool], timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    value = measure()
    while not ok(value) and time.monotonic() < deadline:
        time.sleep(0.1)
        value = measure()
    return value


@pytest.mark.slow
def test_thousand_aborts_leave_no_fds_or_memory_behind(proxy: ProxyProcess) -> None:
    assert proxy.process is not None
    pid = proxy.process.pid
    asyncio.run(_abort_many(proxy.port, 50))  # warm up: first-use allocations, pooled sockets
    _serves(proxy)
    time.sleep(0.5)
    fds, rss = _fds(pid), proxy.rss_bytes()
    started = time.monotonic()
    asyncio.run(_abort_many(proxy.port, ABORTS))
    assert time.monotonic() - started < 30
    after = _settle(lambda: _fds(pid), lambda n: abs(n - fds) <= 3)
    assert abs(after - fds) <= 3, f"{fds} fds before, {after} after"
    growth = proxy.rss_bytes() - rss
    assert growth < 10 * MIB, f"RSS grew by {growth / MIB:.1f} MiB"
    _serves(proxy)


@pytest.mark.slow
async def test_thousand_aborts_leave_no_tasks_behind(
    big_upstream: Upstream, tmp_path: Path
) -> None:
    """The same in-process, to count asyncio tasks: every abort's tasks must end."""
    config = parse_config(yaml.safe_dump({"routes": [_route("big", big_upstream.url)]}))
    port = free_port()
    server = ProxyServer(config, listen=f"127.0.0.1:{port}", admin=f"127.0.0.1:{free_port()}")
    await server.start()
    try:
        await _abort_many(port, 50)
        await _get_ok(port)
        await asyncio.sleep(0.5)
        tasks, fds = len(asyncio.all_tasks()), _fds("self")
        await _abort_many(port, ABORTS)
        deadline = time.monotonic() + 10
        while len(asyncio.all_tasks()) > tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        left = asyncio.all_tasks()
        assert len(left) <= tasks, [t.get_coro() for t in left]
        after = await asyncio.to_thread(_settle, lambda: _fds("self"), lambda n: n - fds <= 4)
        # One-sided: this process also hosts the test's other servers, whose sockets may close
        # meanwhile; a leak shows as growth. The proxy's own count is exact in the test above.
        assert after - fds <= 4, f"{fds} fds before, {after} after"
        await _get_ok(port)
    finally:
        await server.stop()


async def _get_ok(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /big/download?size=5 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert reply.endswith(b"\r\n\r\nddddd")
