"""An upstream failure is logged with its cause, at warning level, without a secret.

Each route fails one way, with real sockets on 127.0.0.1: an HTTPS upstream whose certificate
the proxy does not trust (trustme), TLS spoken to a plain-HTTP port, a closed port, a listener
whose accept queue is full (the connect times out), a server that resets the connection, one
that never answers, and a host under `.invalid` (RFC 6761: never resolves). Every route
presigns AWS-style, so the upstream URL's query holds a signature and a session token: the
log must hold neither (aiohttp's own exception texts quote that URL).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import trustme

from tests.support import (
    ProxyProcess,
    ScriptedUpstream,
    Upstream,
    free_port,
    running_proxy,
    running_upstream,
)

SESSION_TOKEN = "failure-logs-session-token-7a11"
SECRET_KEY = "failure-logs-secret-key-5ec7"
QUERY_SECRET = "app-query-secret-9d2e"
PRESIGN = {
    "scheme": "aws-sigv4",
    "service": "s3",
    "region": "us-east-1",
    "access_key_id": "AKIDFAILURELOGS",
    "secret_access_key": SECRET_KEY,
    "session_token": SESSION_TOKEN,
    "presign_expires": 60,
}


def _reset(server: ScriptedUpstream, conn: socket.socket, head: bytes) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST


def _never_answer(server: ScriptedUpstream, conn: socket.socket, head: bytes) -> None:
    with contextlib.suppress(OSError):
        conn.recv(1)  # until the proxy gives up and closes


@contextlib.contextmanager
def _full_accept_queue() -> Iterator[int]:
    """A port whose listener never accepts and whose accept queue is full: Linux drops further
    SYNs, so a connect to it times out (on loopback, with no packet leaving the host)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for sock in [*fillers, listener]:
            sock.close()


@pytest.fixture(scope="module")
def untrusted_upstream() -> Iterator[Upstream]:
    """HTTPS with a certificate from a CA that nothing trusts (the machine's bundle lacks it)."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(server_context)
    with running_upstream(server_context) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def proxy(
    untrusted_upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    reset, silent = ScriptedUpstream(_reset), ScriptedUpstream(_never_answer)
    with running_upstream() as plain, _full_accept_queue() as backlog:
        upstreams: dict[str, tuple[str, dict[str, Any]]] = {
            "untrusted": (untrusted_upstream.url, {}),
            "not-tls": (f"https://127.0.0.1:{plain.port}", {}),
            "refused": (f"http://127.0.0.1:{free_port()}", {}),
            "backlog": (f"http://127.0.0.1:{backlog}", {"timeout": {"connect": 0.5}}),
            "reset": (reset.url, {}),
            "silent": (silent.url, {"timeout": {"read": 0.5}}),
            "dns": ("http://signing-proxy-upstream.invalid", {}),
        }
        routes = [
            {
                "name": name,
                "match": {"path_prefix": f"/{name}"},
                "upstream": url,
                "signer": PRESIGN,
                **extra,
            }
            for name, (url, extra) in upstreams.items()
        ]
        try:
            with running_proxy({"routes": routes}, tmp_path_factory.mktemp("fails")) as process:
                yield process
        finally:
            reset.close()
            silent.close()


# route -> (status, code, cause, words of the reason)
CASES: dict[str, tuple[int, str, str, str]] = {
    "untrusted": (502, "upstream_unreachable", "tls_verification", "CERTIFICATE_VERIFY_FAILED"),
    "not-tls": (502, "upstream_unreachable", "tls", "SSL"),
    "refused": (502, "upstream_unreachable", "refused", ""),
    "backlog": (504, "upstream_timeout", "timeout", "timeout.connect"),
    "reset": (502, "upstream_bad_response", "reset", "reset"),
    "silent": (504, "upstream_timeout", "timeout", "timeout.read"),
    "dns": (502, "upstream_unreachable", "dns", ""),
}


@pytest.mark.parametrize("name", list(CASES))
def test_upstream_failure_is_a_warning_with_its_cause(proxy: ProxyProcess, name: str) -> None:
    status, code, cause, reason_words = CASES[name]
    path = f"/{name}/{uuid.uuid4().hex}"
    response = requests.get(f"{proxy.url}{path}?q={QUERY_SECRET}", timeout=20)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    [access] = proxy.request_events(path=path)
    assert access["error"] == code

    warnings = proxy.log_events("upstream_failed", route=name)
    assert warnings, proxy.logs()
    warning = warnings[-1]
    assert warning["level"] == "warning"
    assert warning["code"] == code
    assert warning["cause"] == cause, warning
    assert reason_words in warning["reason"], warning
    assert warning["reason"]  # never an empty "why"
    host = "signing-proxy-upstream.invalid" if name == "dns" else "127.0.0.1"
    assert warning["upstream"].startswith(host)


def test_failure_logs_hold_no_secret(proxy: ProxyProcess) -> None:
    """Every failure above quotes, in aiohttp's own text, the upstream URL with the presigned
    query: the log keeps none of it."""
    for name in CASES:
        requests.get(f"{proxy.url}/{name}/x?q={QUERY_SECRET}", timeout=20)
        assert proxy.log_events("upstream_failed", route=name)
    logs = proxy.logs()
    for secret in (SESSION_TOKEN, SECRET_KEY, QUERY_SECRET, "X-Amz-Signature", "X-Amz-Credential"):
        assert secret not in logs


def test_the_cause_is_in_the_log_and_the_reason_in_the_answer(proxy: ProxyProcess) -> None:
    """The client's JSON body and the warning tell the same story for a TLS failure."""
    response = requests.get(f"{proxy.url}/untrusted/y", timeout=20)
    message = response.json()["error"]["message"]
    warning = proxy.log_events("upstream_failed", route="untrusted")[-1]
    assert warning["reason"] in message
