"""Regression corpus of issue 13: the requests third-party attack suites (smuggler, the HTTP
Garden, PortSwigger's smuggling probes, slowloris) got past the proxy, byte for byte, and their
variants. Each runs against a raw upstream that records every byte it receives, and the test
asserts what reached it (usually: nothing), under both aiohttp parsers (llhttp and the
pure-Python one, AIOHTTP_NO_EXTENSIONS=1): both must give the same answers.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from aiohttp import web
from aiohttp.http_exceptions import TransferEncodingError

from proxy.admission import check_header_values, check_target
from proxy.errors import ProxyError
from proxy.forward import failure_reason
from proxy.logs import body_refusal_reason
from tests.support import (
    ProxyProcess,
    RawUpstream,
    Reply,
    running_proxy,
    running_raw_upstream,
    send,
)

TOKEN = "corpus-bearer-token"
HEADER_TIMEOUT = 1.5
PARSERS = {"llhttp": {}, "python": {"AIOHTTP_NO_EXTENSIONS": "1"}}


@pytest.fixture(scope="module")
def raw_upstream() -> Iterator[RawUpstream]:
    with running_raw_upstream() as upstream:
        yield upstream


def _config(upstream: RawUpstream) -> dict[str, Any]:
    bearer = {"scheme": "bearer", "token": TOKEN}
    devo = {"scheme": "devo", "api_key": "corpus-devo-key", "api_secret": "corpus-devo-secret"}
    base = upstream.url + "/base"
    return {
        "request_limits": {"header_timeout": HEADER_TIMEOUT},
        "routes": [
            {"name": "b", "match": {"path_prefix": "/b"}, "upstream": base, "signer": bearer,
             "retries": {"attempts": 3}},
            {"name": "d", "match": {"path_prefix": "/d"}, "upstream": base, "signer": devo},
            {"name": "fwd", "match": {"host": "r.test"}, "upstream": base, "signer": bearer},
            {"name": "one", "match": {"path_prefix": "/one"}, "upstream": base,
             "signer": bearer, "max_upstream_connections": 1, "timeout": {"connect": 0.5}},
        ],
    }  # fmt: skip


@pytest.fixture(scope="module", params=list(PARSERS))
def proxy(
    request: pytest.FixtureRequest,
    raw_upstream: RawUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyProcess]:
    workdir = tmp_path_factory.mktemp(f"corpus-{request.param}")
    env = PARSERS[request.param]
    with running_proxy(_config(raw_upstream), workdir, env=env) as process:
        yield process
        # No case may have crashed the handler: no traceback, no error-level line, at all.
        assert "Traceback" not in process.logs()
        assert '"level": "error"' not in process.logs()


def _answer(port: int, data: bytes) -> Reply:
    """Like `send`, but done once one whole response is in (by its Content-Length): for
    refusals after which aiohttp keeps reading a declared body for its lingering time."""
    raw = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        while True:
            head, sep, body = raw.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            if sep and length and len(body) >= int(length.group(1)):
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else 0
    return Reply(status, head, body)


def _reached(upstream: RawUpstream, mark: int) -> bytes:
    time.sleep(0.1)  # anything forwarded has been received by now
    return upstream.received_since(mark)


def _serves(proxy: ProxyProcess, upstream: RawUpstream) -> None:
    mark = upstream.mark()
    reply = send(proxy.port, b"GET /b/next HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert reply.status == 200, reply
    assert _reached(upstream, mark).startswith(b"GET /base/next HTTP/1.1\r\n")


def _no_banner(reply: Reply) -> None:
    assert not re.search(rb"(?im)^server:", reply.head), reply.head


# -- 1. TRACE / TRACK: the upstream would echo the signed request -------------------------------

ECHO_METHODS = {
    "trace": b"TRACE /b/anything HTTP/1.1\r\nHost: h\r\n\r\n",
    "trace-absolute-form": b"TRACE http://r.test/anything HTTP/1.1\r\nHost: r.test\r\n\r\n",
    "trace-with-body": b"TRACE /b/anything HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    "trace-then-get": b"TRACE /b/anything HTTP/1.1\r\nHost: h\r\n\r\n"
    b"GET /b/after HTTP/1.1\r\nHost: h\r\n\r\n",
    "track": b"TRACK /b/anything HTTP/1.1\r\nHost: h\r\n\r\n",
}


@pytest.mark.parametrize("case", list(ECHO_METHODS))
def test_trace_and_track_are_refused_never_signed(
    proxy: ProxyProcess, raw_upstream: RawUpstream, case: str
) -> None:
    mark = raw_upstream.mark()
    reply = send(proxy.port, ECHO_METHODS[case], timeout=3)
    assert _reached(raw_upstream, mark) == b""
    assert TOKEN.encode() not in reply.body
    if case == "track":  # llhttp does not know TRACK: its 400, and the same from the other
        assert reply.status == 400, reply
    else:
        assert (reply.status, reply.error_code()) == (405, "method_not_allowed"), reply
        assert b"\r\nAllow: " in reply.head
    assert reply.closed  # the pipelined GET of trace-then-get is never read as a request
    _no_banner(reply)
    _serves(proxy, raw_upstream)


def test_trace_is_not_a_default_retry_method() -> None:
    from proxy.config import RetryConfig

    assert "TRACE" not in RetryConfig(attempts=2).methods


# -- 2. Content-Length: the proxy writes the framing it forwards ---------------------------------

BAD_CONTENT_LENGTHS = {
    "leading-zero": b"010",
    "octal-looking": b"0120",
    "four-thousand-zeros": b"0" * 4000 + b"5",
    "double-zero": b"00",
    "2^63": b"9223372036854775808",
    "2^64": b"18446744073709551616",
    "2^64+5": b"18446744073709551621",
    "huge": b"99999999999999999999999",
    "plus": b"+5",
    "minus": b"-5",
}


@pytest.mark.parametrize("case", list(BAD_CONTENT_LENGTHS))
@pytest.mark.parametrize("path", [b"/b/x", b"/d/x"], ids=["streamed", "signed-body"])
def test_non_canonical_content_length_is_400_at_the_door(
    proxy: ProxyProcess, raw_upstream: RawUpstream, case: str, path: bytes
) -> None:
    """The HTTP Garden's octal case: `0120` read as 80 by the upstream left 40 body bytes, an
    unsigned request outside the base path, on the shared connection."""
    smuggled = b"GET /admin/secrets HTTP/1.1\r\nHost: h\r\n\r\n"
    body = smuggled + b"x" * (120 - len(smuggled))
    data = (
        b"POST " + path + b" HTTP/1.1\r\nHost: h\r\nContent-Length: "
        + BAD_CONTENT_LENGTHS[case] + b"\r\n\r\n" + body
    )  # fmt: skip
    mark = raw_upstream.mark()
    reply = _answer(proxy.port, data)
    assert _reached(raw_upstream, mark) == b""
    assert reply.status == 400, reply
    if reply.error_code() != "malformed_request":  # else the parser's own refusal
        assert reply.error_code() == "invalid_content_length"
        assert b"\r\nConnection: close" in reply.head
    _no_banner(reply)
    _serves(proxy, raw_upstream)


def test_streamed_body_goes_out_in_the_proxys_own_framing(
    proxy: ProxyProcess, raw_upstream: RawUpstream
) -> None:
    mark = raw_upstream.mark()
    reply = send(
        proxy.port,
        b"POST /b/x HTTP/1.1\r\nHost: h\r\ncontent-length:   5  \r\nConnection: close\r\n\r\nhello",
    )
    assert reply.status == 200, reply
    received = _reached(raw_upstream, mark)
    head, _, body = received.partition(b"\r\n\r\n")
    assert re.findall(rb"(?i)\r\ncontent-length:([^\r]*)", head) == [b" 5"]
    assert body == b"hello"


def test_chunked_body_is_reframed_and_zero_length_is_kept(
    proxy: ProxyProcess, raw_upstream: RawUpstream
) -> None:
    mark = raw_upstream.mark()
    reply = send(
        proxy.port,
        b"POST /b/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
        b"\r\n2;ext=1\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n",
    )
    assert reply.status == 200, reply
    head, _, body = _reached(raw_upstream, mark).partition(b"\r\n\r\n")
    assert b"\r\nTransfer-Encoding: chunked" in head
    assert b"ext=1" not in body
    assert re.sub(rb"[0-9a-f]+\r\n", b"", body).replace(b"\r\n", b"") == b"hello"
    mark = raw_upstream.mark()
    reply = send(
        proxy.port,
        b"POST /b/x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    assert reply.status == 200, reply
    assert b"\r\nContent-Length: 0\r\n" in _reached(raw_upstream, mark)


# -- 3. CONNECT with a body: the 405 closes the connection ----------------------------------------

CONNECTS = {
    "content-length-body": b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nContent-Length: 37\r\n\r\n"
    b"GET /b/smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    "no-body-then-request": b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"
    b"GET /b/smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    "chunked-body": b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"28\r\nGET /b/smuggled HTTP/1.1\r\nHost: h\r\n\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("case", list(CONNECTS))
def test_connect_refusal_closes_the_connection(
    proxy: ProxyProcess, raw_upstream: RawUpstream, case: str
) -> None:
    mark = raw_upstream.mark()
    reply = send(proxy.port, CONNECTS[case], timeout=3)
    assert _reached(raw_upstream, mark) == b""
    assert reply.status in {400, 405}, reply
    if reply.status == 405:
        # Closed once aiohttp has discarded what it holds as the CONNECT's body (the pure-Python
        # parser reads a tunnel there, up to its 10 s lingering time).
        assert b"\r\nConnection: close" in reply.head
    assert b"HTTP/1.1" not in reply.body  # one answer, not a second one for the smuggled GET
    _serves(proxy, raw_upstream)


# -- 4. Ports: ASCII digits, 1-65535 -------------------------------------------------------------

BAD_HOST_PORTS = {
    "superscript-two": "a:²",
    "five-thousand-digits": "a:" + "1" * 5000,
    "arabic-indic": "a:٣٣",
    "fullwidth": "a:\uff18\uff10",
    "zero": "a:0",
    "too-large": "a:65536",
    "six-digits": "a:000080",
    "plus": "a:+80",
    "minus": "a:-1",
    "ipv6-bad-port": "[::1]:x",
    "ipv6-unclosed": "[::1",
}


@pytest.mark.parametrize("case", list(BAD_HOST_PORTS))
def test_host_ports_other_than_ascii_1_to_65535_are_400(
    proxy: ProxyProcess, raw_upstream: RawUpstream, case: str
) -> None:
    host = BAD_HOST_PORTS[case].encode()
    mark = raw_upstream.mark()
    reply = send(
        proxy.port, b"GET /b/x HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    )
    assert _reached(raw_upstream, mark) == b""
    assert (reply.status, reply.error_code()) == (400, "invalid_host"), reply
    _no_banner(reply)
    events = proxy.request_events(error="invalid_host")  # logged, not a crash (status 0)
    assert events
    assert {event["status"] for event in events} == {400}


@pytest.mark.parametrize(
    "target", [b"http://r.test:\xc2\xb2/x", b"http://r.test:99999/x", b"http://r.test:0/x"]
)
def test_absolute_form_ports_are_checked_too(
    proxy: ProxyProcess, raw_upstream: RawUpstream, target: bytes
) -> None:
    mark = raw_upstream.mark()
    reply = _answer(proxy.port, b"GET " + target + b" HTTP/1.1\r\nHost: r.test\r\n\r\n")
    assert _reached(raw_upstream, mark) == b""
    assert reply.status == 400, reply


@pytest.mark.parametrize(
    ("head", "path"),
    [
        (b"GET /b/x HTTP/1.1\r\nHost: a:\r\n", b"/base/x"),
        (b"GET http://r.test:/x HTTP/1.1\r\nHost: r.test:\r\n", b"/base/x"),
        (b"GET /b/x HTTP/1.1\r\nHost: a:65535\r\n", b"/base/x"),
        (b"GET /b/x HTTP/1.1\r\nHost: [::1]:8080\r\n", b"/base/x"),
    ],
    ids=["empty-port", "absolute-empty-port", "max-port", "ipv6"],
)
def test_empty_port_means_the_default_port(
    proxy: ProxyProcess, raw_upstream: RawUpstream, head: bytes, path: bytes
) -> None:
    mark = raw_upstream.mark()
    reply = send(proxy.port, head + b"Connection: close\r\n\r\n")
    assert reply.status == 200, reply
    assert _reached(raw_upstream, mark).startswith(b"GET " + path + b" HTTP/1.1\r\n")


# -- 5. Both parsers, same answers ---------------------------------------------------------------

PARSER_PARITY = {
    "non-utf8-path": b"GET /b/\xe9 HTTP/1.1\r\nHost: h\r\n\r\n",
    "non-utf8-query": b"GET /b/x?a=\xff HTTP/1.1\r\nHost: h\r\n\r\n",
    "raw-utf8-path": "GET /b/é HTTP/1.1\r\nHost: h\r\n\r\n".encode(),
    "raw-utf8-query": "GET /b/x?q=é HTTP/1.1\r\nHost: h\r\n\r\n".encode(),
    "lowercase-get": b"get /b/x HTTP/1.1\r\nHost: h\r\n\r\n",
    "mixed-case-post": b"Post /b/x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    "unknown-method": b"FROB /b/x HTTP/1.1\r\nHost: h\r\n\r\n",
    "rtsp-method": b"DESCRIBE /b/x HTTP/1.1\r\nHost: h\r\n\r\n",
    "version-9.9": b"GET /b/x HTTP/9.9\r\nHost: h\r\n\r\n",
    "version-1.2": b"GET /b/x HTTP/1.2\r\nHost: h\r\n\r\n",
    "tls-hello-no-newline": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    "binary-no-newline": b"\x00\x01\x02\x03",
    "content-length-2^64": b"POST /b/x HTTP/1.1\r\nHost: h\r\n"
    b"Content-Length: 18446744073709551616\r\n\r\nxx",
}


@pytest.mark.parametrize("case", list(PARSER_PARITY))
def test_both_parsers_refuse_the_same_bytes(
    proxy: ProxyProcess, raw_upstream: RawUpstream, case: str
) -> None:
    mark = raw_upstream.mark()
    reply = _answer(proxy.port, PARSER_PARITY[case])
    assert _reached(raw_upstream, mark) == b""
    assert reply.status == 400, reply
    json.loads(reply.body)  # the proxy's JSON error, never aiohttp's text page or a 500
    _no_banner(reply)


def test_double_spaces_in_the_request_line_are_tolerated_by_both(
    proxy: ProxyProcess, raw_upstream: RawUpstream
) -> None:
    mark = raw_upstream.mark()
    reply = send(proxy.port, b"GET  /b/x  HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert reply.status == 200, reply
    assert _reached(raw_upstream, mark).startswith(b"GET /base/x HTTP/1.1\r\n")


@pytest.mark.smoke  # aiohttp 3.11 (the floor) quotes and passes more: run there too
@pytest.mark.parametrize(
    "data",
    [
        b"GET /b/x?apikey=QUERYMARK\x01 HTTP/1.1\r\nHost: h\r\n\r\n",
        b"get /b/x?apikey=QUERYMARK HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /b/x?apikey=QUERYMARK HTTP/9.9\r\nHost: h\r\n\r\n",
        b"GET /b/x?apikey=QUERYMARK\xe9 HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET http://r.test:\xc2\xb2/QUERYMARK HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /b/x HTTP/1.1\r\nHost: h\r\nProxy-Authorization: Bearer HEADERMARK\x01\r\n\r\n",
        b"GET /b/x HTTP/1.1\r\nHost: h\r\nX-Key: HEADERMARK\r\n HEADERMARK\r\n\r\n",
        b"GET /b/x HTTP/1.1\r\nHost: h\r\nX-" + b"HEADERMARK" * 900 + b": v\r\n\r\n",
        b"GET /b/x HTTP/1.1\r\nHost: h:\xc2\xb2HEADERMARK\r\n\r\n",
        b"POST /b/x?apikey=QUERYMARK HTTP/1.1\r\nHost: h\r\nContent-Length: 0HEADERMARK\r\n\r\n",
        b"POST /d/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\nQUERYMARK\r\n\r\n",
    ],
    ids=[
        "control-in-query", "lowercase", "version", "raw-byte-in-query", "absolute-port",
        "header-control", "obs-fold", "long-name", "host-port", "content-length",
        "chunk-size",
    ],
)  # fmt: skip
def test_no_log_line_quotes_a_refused_request(
    proxy: ProxyProcess, raw_upstream: RawUpstream, data: bytes
) -> None:
    mark = raw_upstream.mark()
    reply = send(proxy.port, data, timeout=3)
    assert reply.status == 400, reply
    assert _reached(raw_upstream, mark) == b""
    time.sleep(0.2)  # the log line of the refusal is written
    logs = proxy.logs()
    assert "QUERYMARK" not in logs
    assert "HEADERMARK" not in logs
    assert b"QUERYMARK" not in reply.body  # nor the error page
    assert b"HEADERMARK" not in reply.body


@pytest.mark.smoke
def test_what_older_parsers_let_through_is_refused_at_the_door() -> None:
    """aiohttp 3.11's pure-Python parser passes control characters in the target and in header
    values (llhttp and later releases refuse them): the proxy refuses them itself, quoting
    neither; and a body error's reason comes from the parser's error, never from the text of
    aiohttp's wrapper, which is that error's `str()` with the refused bytes."""
    for target in ("/b/x?apikey=QUERYMARK\x01", "/b/x?k=QUERYMARK\x7f", "/b/\tx"):
        with pytest.raises(ProxyError) as refused:
            check_target(target)
        assert refused.value.code == "invalid_target"
        assert "QUERYMARK" not in refused.value.message
    check_target("/b/x?apikey=v%01")
    for value in (b"Bearer HEADERMARK\x01", b"a\x00b", b"a\x7fb", b"a\x1bb"):
        with pytest.raises(ProxyError) as refused:
            check_header_values(((b"Host", b"h"), (b"Proxy-Authorization", value)))
        assert refused.value.code == "invalid_header"
        assert "HEADERMARK" not in refused.value.message
    check_header_values(((b"X-Key", b"a\tb c\xc3\xa9"),))
    # As aiohttp 3.11 builds them: its chunk-size error is the refused line itself.
    cause = TransferEncodingError("QUERYMARK")
    wrapped = web.RequestPayloadError(str(cause))
    wrapped.__cause__ = cause
    assert "QUERYMARK" in str(wrapped)
    assert body_refusal_reason(wrapped) == "Invalid character in chunk size"
    assert failure_reason(wrapped) == "Invalid character in chunk size"
    assert body_refusal_reason(web.RequestPayloadError("QUERYMARK")) == "RequestPayloadError"


@pytest.mark.parametrize("route", ["d", "b"])
def test_a_bad_chunk_after_the_body_started_is_refused_unquoted(
    proxy: ProxyProcess, raw_upstream: RawUpstream, route: str
) -> None:
    """The chunk-size line arrives once the body is being read for signing (devo, /d) or
    streamed upstream (bearer, /b): the client gets its 400 at once (llhttp reports the error
    as a new message, which aiohttp never passes to the open body: 408 at
    timeout.client_body), without its bytes, and no log line quotes them or has a
    traceback."""
    mark = raw_upstream.mark()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        head = f"POST /{route}/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        sock.sendall(head.encode())
        sock.sendall(b"5\r\nhello\r\n")
        time.sleep(0.3)  # the handler is reading the body now
        sock.sendall(b"QUERYMARK\r\n")
        answer = b""
        while chunk := sock.recv(65536):  # the connection closes after the one answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert b"invalid_body" in answer
    assert b"QUERYMARK" not in answer
    if route == "d":  # signed bodies are read whole first; a streamed one had started
        assert _reached(raw_upstream, mark) == b""
    time.sleep(0.3)  # the lingering read's log line is written
    logs = proxy.logs()
    assert "QUERYMARK" not in logs
    assert "Traceback" not in logs


# -- 6. Request-head timeout, idle keep-alive, per-route upstream connections -------------------


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def _header_timeouts(proxy: ProxyProcess) -> float:
    text = requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
    match = re.search(r"^signing_proxy_header_timeouts_total (\S+)$", text, re.M)
    assert match, text
    return float(match.group(1))


def test_a_connection_that_sends_nothing_is_closed(proxy: ProxyProcess) -> None:
    before = _header_timeouts(proxy)
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        assert _closed_within(sock, HEADER_TIMEOUT + 5)
    assert _header_timeouts(proxy) == before + 1


def test_slowloris_head_is_closed_at_the_header_timeout(
    proxy: ProxyProcess, raw_upstream: RawUpstream
) -> None:
    """One byte every 0.3 s: aiohttp's keep-alive timer alone never closed it."""
    before = _header_timeouts(proxy)
    mark = raw_upstream.mark()
    head = b"GET /b/slow HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"a" * 200
    closed = False
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if _closed_within(sock, 0.3):
                closed = True
                break
            if time.monotonic() - started > HEADER_TIMEOUT + 10:
                break
    assert closed
    assert _reached(raw_upstream, mark) == b""
    assert _header_timeouts(proxy) == before + 1


def test_the_header_timeout_runs_from_the_first_byte_of_a_later_head(
    proxy: ProxyProcess, raw_upstream: RawUpstream
) -> None:
    """An idle keep-alive connection is not cut by the header timeout (it has the 75 s idle
    timeout); once a later request starts, its head must be complete within the timeout."""
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"GET /b/one HTTP/1.1\r\nHost: h\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert not _closed_within(sock, HEADER_TIMEOUT + 0.5)  # idle, still open
        sock.sendall(b"GET /b/two HTTP/1.1\r\nHost: h\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        before = _header_timeouts(proxy)
        sock.sendall(b"GET /b/three HTTP/1.1\r\nHo")  # and nothing more
        assert _closed_within(sock, HEADER_TIMEOUT + 5)
    assert _header_timeouts(proxy) == before + 1


def test_the_per_route_upstream_connection_cap_holds(
    proxy: ProxyProcess, raw_upstream: RawUpstream
) -> None:
    """A slow body holds its route's only upstream connection (max_upstream_connections: 1):
    the next request on that route waits `timeout.connect` (0.5 s) and gets a 503; other
    routes are untouched; once the slow request ends, the route serves again."""
    mark = raw_upstream.mark()
    with socket.create_connection(("127.0.0.1", proxy.port)) as slow:
        slow.sendall(b"POST /one/slow HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhello")
        deadline = time.monotonic() + 5
        while b"POST /base/slow " not in raw_upstream.received_since(mark) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.02)  # until its upstream exchange has started
        blocked = send(proxy.port, b"GET /one/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert (blocked.status, blocked.error_code()) == (503, "upstream_connections_exhausted")
        _serves(proxy, raw_upstream)  # another route
        slow.sendall(b"world")
        slow.settimeout(5)
        assert slow.recv(65536).startswith(b"HTTP/1.1 200")
    again = send(proxy.port, b"GET /one/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert again.status == 200, again


# -- 7. No Server banner, on any answer, either port ---------------------------------------------


def test_no_server_banner_anywhere(proxy: ProxyProcess) -> None:
    answers = [
        send(proxy.port, b"GET /b/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),  # relayed
        send(proxy.port, b"GET /nowhere HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
        send(proxy.port, b"GET /b/x HTTP/1.1\r\nHost: h\r\nX-A: \x01\r\n\r\n"),  # parser
        send(proxy.port, b"\x16\x03\x01\x00"),  # TLS on the plain port
    ]
    for path in ("/healthz", "/readyz", "/metrics", "/nowhere"):
        answers.append(
            send(
                proxy.admin_port,
                b"GET " + path.encode() + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            )
        )
    answers.append(_answer(proxy.admin_port, b"POST /healthz HTTP/1.1\r\nHost: h\r\n\r\n"))
    answers.append(_answer(proxy.admin_port, b"get /healthz HTTP/1.1\r\nHost: h\r\n\r\n"))
    statuses = [answer.status for answer in answers]
    assert statuses == [200, 403, 400, 400, 200, 200, 200, 404, 405, 400], statuses
    for answer in answers:
        _no_banner(answer)
