"""The stop's promise: SIGTERM -> exit within drain delay + shutdown timeout + 1 s, whatever is in
flight; a request still running at the deadline is cut, logged and counted as `shutdown`; and
the process exits right after its `stopped` line (no thread holds it).

These measure the bound a pod's grace period is sized by (a correctness property, with a second
of margin by design), not speed."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest
import requests
import yaml
from aiohttp import web

from proxy.config import parse_config
from proxy.server import ProxyServer
from proxy.signals import STOP_MARGIN_SECONDS
from proxy.threads import DaemonThreadPool
from tests.support import ProxyProcess, Upstream, free_port, one_route_config, running_upstream

DRAIN = 1.0
TIMEOUT = 2.0


class SlowUpstream:
    """An upstream whose /slow answers only when released (or after 60 s): a request that
    outlives any shutdown timeout used here."""

    def __init__(self, upstream: Upstream) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        upstream.handlers["/slow"] = self._slow

    async def _slow(self, request: web.BaseRequest) -> web.Response:
        self.arrived.set()
        await asyncio.to_thread(self.release.wait, 60)
        return web.Response(text="finished")


@pytest.fixture
def slow_upstream() -> Iterator[tuple[Upstream, SlowUpstream]]:
    with running_upstream() as upstream:
        slow = SlowUpstream(upstream)
        try:
            yield upstream, slow
        finally:
            slow.release.set()  # lets the upstream's own shutdown finish


def _sigterm_with_request_in_flight(proxy: ProxyProcess, slow: SlowUpstream) -> float:
    """Send a request that outlives the timeout, SIGTERM once it reached the upstream; the
    seconds from the signal to the process's exit."""
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(requests.get, f"{proxy.url}/slow", timeout=60)
        assert slow.arrived.wait(20)
        started = time.monotonic()
        code = proxy.stop(signal.SIGTERM, timeout=60)
        elapsed = time.monotonic() - started
        with pytest.raises(requests.ConnectionError):  # cut: never a response that looks whole
            pending.result()
    assert code == 0
    return elapsed


def test_sigterm_exits_within_drain_plus_timeout_and_the_cut_request_says_shutdown(
    tmp_path: Path, slow_upstream: tuple[Upstream, SlowUpstream]
) -> None:
    upstream, slow = slow_upstream
    proxy = ProxyProcess(
        one_route_config(upstream.url),
        tmp_path,
        drain_delay=DRAIN,
        extra_args=["--shutdown-timeout", str(TIMEOUT)],
    ).start()
    elapsed = _sigterm_with_request_in_flight(proxy, slow)
    # Before: drain + 2 x timeout (aiohttp's runner waited twice).
    assert elapsed <= DRAIN + TIMEOUT + STOP_MARGIN_SECONDS, elapsed
    assert elapsed >= DRAIN + TIMEOUT - 0.1, "the request was not given its time"
    events = proxy.events()
    cut = [e for e in events if e.get("event") == "request" and e["path"] == "/slow"]
    assert [e["error"] for e in cut] == ["shutdown"]  # not client_closed: the client did not go
    assert [e["status"] for e in cut] == [503]  # counted as ours, not as the client's 499
    assert any(e.get("event") == "shutdown_cut_requests" for e in events)
    assert events[-1]["event"] == "stopped"


def test_workers_keep_the_same_bound(
    tmp_path: Path, slow_upstream: tuple[Upstream, SlowUpstream]
) -> None:
    upstream, slow = slow_upstream
    proxy = ProxyProcess(
        one_route_config(upstream.url),
        tmp_path,
        drain_delay=DRAIN,
        extra_args=["--shutdown-timeout", str(TIMEOUT), "--workers", "2"],
    ).start()
    deadline = time.monotonic() + 30
    while not requests.get(f"{proxy.admin_url}/readyz", timeout=5).ok:
        assert time.monotonic() < deadline, proxy.logs()
        time.sleep(0.1)
    elapsed = _sigterm_with_request_in_flight(proxy, slow)
    assert elapsed <= DRAIN + TIMEOUT + STOP_MARGIN_SECONDS, elapsed
    events = proxy.events()
    assert [e["error"] for e in events if e.get("path") == "/slow"] == ["shutdown"]
    assert not any(e.get("event") == "worker_stop_timeout" for e in events)
    assert events[-1]["event"] == "stopped"


def test_a_thread_stuck_in_a_credential_fetch_does_not_hold_the_exit(tmp_path: Path) -> None:
    """An STS endpoint that accepts and never answers holds botocore's fetch thread for its
    60 s read timeout; the process still exits right after `stopped`."""
    with socket.socket() as silent_sts:
        silent_sts.bind(("127.0.0.1", 0))
        silent_sts.listen(16)
        config = {
            "routes": [
                {
                    "name": "queue",
                    "match": {"host": "sqs.eu-west-1.amazonaws.com"},
                    "signer": {
                        "scheme": "aws-sigv4",
                        "detect": True,
                        "role_arn": "arn:aws:iam::123456789012:role/stuck",
                    },
                }
            ]
        }
        env = {
            "HOME": str(tmp_path),
            "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
            "AWS_ENDPOINT_URL_STS": f"http://127.0.0.1:{silent_sts.getsockname()[1]}",
            "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "not-a-real-secret",
            "AWS_DEFAULT_REGION": "eu-west-1",
        }
        proxy = ProxyProcess(
            config, tmp_path, env=env, extra_args=["--shutdown-timeout", str(TIMEOUT)]
        ).start()
        deadline = time.monotonic() + 20
        while True:  # the fetch is under way once the STS endpoint has a connection
            silent_sts.settimeout(max(0.1, deadline - time.monotonic()))
            connection, _ = silent_sts.accept()
            break
        with connection:
            started = time.monotonic()
            code = proxy.stop(signal.SIGTERM, timeout=30)
            elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed <= TIMEOUT + STOP_MARGIN_SECONDS, elapsed  # before: held for ~60 s
    assert proxy.events()[-1]["event"] == "stopped"


async def test_cut_requests_are_counted_under_shutdown(
    slow_upstream: tuple[Upstream, SlowUpstream],
) -> None:
    upstream, slow = slow_upstream
    config = parse_config(yaml.safe_dump(one_route_config(upstream.url)))
    port = free_port()
    server = ProxyServer(
        config,
        listen=f"127.0.0.1:{port}",
        admin=f"127.0.0.1:{free_port()}",
        shutdown_timeout=0.3,
    )
    await server.start()
    async with aiohttp.ClientSession() as session:
        pending = asyncio.ensure_future(session.get(f"http://127.0.0.1:{port}/slow"))
        assert await asyncio.to_thread(slow.arrived.wait, 20)
        await server.stop()
        with pytest.raises(aiohttp.ClientError):
            await pending
    registry = server.metrics.registry
    labels = {"route": "slow", "code": "shutdown"}
    assert registry.get_sample_value("signing_proxy_errors_total", labels) == 1
    closed = {"route": "slow", "code": "client_closed"}
    assert registry.get_sample_value("signing_proxy_errors_total", closed) is None
    requests_503 = {"route": "slow", "method": "GET", "code": "503"}
    assert registry.get_sample_value("signing_proxy_requests_total", requests_503) == 1


async def test_the_daemon_pool_runs_calls_and_its_shutdown_never_waits() -> None:
    pool = DaemonThreadPool(max_threads=2, name="test-pool")
    loop = asyncio.get_running_loop()
    loop.set_default_executor(pool)  # plain asyncio accepts only a ThreadPoolExecutor here
    assert await asyncio.to_thread(sum, [1, 2]) == 3
    with pytest.raises(ZeroDivisionError):
        await asyncio.to_thread(divmod, 1, 0)
    release = threading.Event()
    blocked = loop.run_in_executor(None, release.wait, 30)
    pool.shutdown(wait=True)  # returns while a thread is still inside a call (else: hangs here)
    threads = [t for t in threading.enumerate() if t.name.startswith("test-pool")]
    assert threads
    assert all(t.daemon for t in threads)  # never joined at the interpreter's exit
    release.set()
    assert await blocked is True
    with pytest.raises(RuntimeError):
        pool.submit(sum, [1])
