"""The HTTP parser's limits are configurable (request_limits); over a limit is a 400."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support import running_proxy, running_upstream


def _status(port: int, head: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + b"Connection: close\r\n\r\n")
        reply = sock.recv(4096)
    return int(reply.split(b" ", 2)[1])


def test_configured_limits_apply(tmp_path: Path) -> None:
    with running_upstream() as upstream:
        config = {
            "request_limits": {"max_line_bytes": 512, "max_field_bytes": 1024, "max_headers": 16},
            "routes": [
                {
                    "name": "a",
                    "match": {"path_prefix": "/"},
                    "upstream": upstream.url,
                    "signer": {"scheme": "bearer", "token": "t"},
                }
            ],
        }
        with running_proxy(config, tmp_path) as proxy:
            get = b"GET /x HTTP/1.1\r\nHost: h\r\n"
            assert _status(proxy.port, get + b"X-A: " + b"v" * 1000 + b"\r\n") == 200
            assert _status(proxy.port, get + b"X-A: " + b"v" * 1100 + b"\r\n") == 400
            assert _status(proxy.port, b"GET /" + b"p" * 400 + b" HTTP/1.1\r\nHost: h\r\n") == 200
            assert _status(proxy.port, b"GET /" + b"p" * 600 + b" HTTP/1.1\r\nHost: h\r\n") == 400
            many = b"".join(b"X-%d: v\r\n" % i for i in range(20))
            assert _status(proxy.port, get + many) == 400
            assert _status(proxy.port, get + many[:60]) == 200
            seen = len(upstream.seen)
    assert seen == 3  # only the requests within the limits reached the upstream
