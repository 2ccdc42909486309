"""Hot reload (SIGHUP and file changes, kubelet-style symlink swaps) and the Kubernetes drain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from aiohttp import web

from tests.support import ProxyProcess, Upstream, running_upstream


class KubeletVolume:
    """A directory updated the way the kubelet updates a mounted ConfigMap or Secret: files live
    in a timestamped directory, `..data` points at it, and each visible name is a symlink
    through `..data`. An update writes a new directory and swaps `..data` atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.generation = 0

    def write(self, files: dict[str, str]) -> None:
        self.generation += 1
        target = self.root / f"..2026_11_23_{self.generation:04d}"
        target.mkdir()
        for name, text in files.items():
            (target / name).write_text(text)
        staging = self.root / "..data_tmp"
        staging.symlink_to(target.name)
        os.replace(staging, self.root / "..data")  # the atomic swap
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")


def _config(
    upstream: Upstream,
    secret_path: Path,
    prefix: str = "/a",
    signer: dict[str, Any] | None = None,
    **extra: Any,
) -> str:
    config = {
        "routes": [
            {
                "name": "main",
                "match": {"path_prefix": prefix},
                "upstream": upstream.url,
                "signer": signer or {"scheme": "bearer", "token": {"file": str(secret_path)}},
            }
        ],
        **extra,
    }
    return yaml.safe_dump(config)


def _auth(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    headers = dict((k.lower(), v) for k, v in response.json()["headers"])
    return headers["authorization"]


def _events(proxy: ProxyProcess, name: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in proxy.logs().splitlines() if line.startswith("{")]
    return [event for event in lines if event.get("event") == name]


def _wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def slow_gate() -> threading.Event:
    return threading.Event()


@pytest.fixture
def upstream(slow_gate: threading.Event) -> Iterator[Upstream]:
    with running_upstream() as server:

        async def slow(request: web.BaseRequest) -> web.StreamResponse:
            slow_gate.set()
            await asyncio.sleep(1.5)
            return await server.echo(request)

        server.handlers["/slow"] = slow  # the route's prefix is stripped before forwarding
        yield server


@pytest.fixture
def volumes(tmp_path: Path) -> tuple[KubeletVolume, KubeletVolume]:
    return KubeletVolume(tmp_path / "config"), KubeletVolume(tmp_path / "secrets")


def _start(
    upstream: Upstream,
    volumes: tuple[KubeletVolume, KubeletVolume],
    tmp_path: Path,
    signer: dict[str, Any] | None = None,
    **kw: Any,
) -> ProxyProcess:
    config_volume, secret_volume = volumes
    secret_volume.write({"token": "token-one\n"})
    config = _config(upstream, secret_volume.root / "token", signer=signer)
    config_volume.write({"config.yaml": config})
    proxy = ProxyProcess({}, tmp_path, write_config=False, **kw)
    proxy.extra_args = []
    # The config path is the kubelet's symlink, exactly as mounted in a pod.
    (tmp_path / "config.yaml").symlink_to(config_volume.root / "config.yaml")
    return proxy.start()


def test_rotated_secret_is_used_within_2_seconds(
    upstream: Upstream, volumes: tuple[KubeletVolume, KubeletVolume], tmp_path: Path
) -> None:
    proxy = _start(upstream, volumes, tmp_path)
    try:
        assert _auth(requests.get(f"{proxy.url}/a/x", timeout=5)) == "Bearer token-one"
        volumes[1].write({"token": "token-two\n"})
        rotated = time.monotonic()
        assert _wait_for(
            lambda: _auth(requests.get(f"{proxy.url}/a/x", timeout=5)) == "Bearer token-two",
            timeout=2.0,
        ), "the rotated secret was not used within 2 s"
        assert time.monotonic() - rotated < 2.0
        metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
        assert 'signing_proxy_config_reloads_total{result="success"} 1.0' in metrics
        assert "signing_proxy_config_last_reload_success_timestamp_seconds" in metrics
        assert "\nsigning_proxy_config_last_reload_successful 1.0\n" in metrics
    finally:
        assert proxy.stop() == 0


def test_valid_change_applies_to_next_request(
    upstream: Upstream, volumes: tuple[KubeletVolume, KubeletVolume], tmp_path: Path
) -> None:
    proxy = _start(upstream, volumes, tmp_path)
    try:
        secret = volumes[1].root / "token"
        volumes[0].write({"config.yaml": _config(upstream, secret, prefix="/b")})
        assert _wait_for(
            lambda: requests.get(f"{proxy.url}/b/x", timeout=5).status_code == 200, timeout=3
        )
        assert requests.get(f"{proxy.url}/a/x", timeout=5).status_code == 403
        assert _events(proxy, "config_reloaded")
    finally:
        assert proxy.stop() == 0


def test_invalid_change_is_rejected_and_old_routes_keep_working(
    upstream: Upstream, volumes: tuple[KubeletVolume, KubeletVolume], tmp_path: Path
) -> None:
    proxy = _start(upstream, volumes, tmp_path)
    try:
        volumes[0].write({"config.yaml": "routes:\n  - name: BROKEN\n    tiemout: 1\n"})
        assert _wait_for(lambda: bool(_events(proxy, "config_reload_failed")), timeout=3)
        failure = _events(proxy, "config_reload_failed")[0]
        problems = " ".join(failure["problems"])
        assert "routes[0].name" in problems
        assert "routes[0].tiemout: unknown key" in problems
        assert _auth(requests.get(f"{proxy.url}/a/x", timeout=5)) == "Bearer token-one"
        metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
        assert 'signing_proxy_config_reloads_total{result="failure"} 1.0' in metrics
        # What the SigningProxyConfigReloadFailed alert watches: 0 until a reload succeeds.
        assert "\nsigning_proxy_config_last_reload_successful 0.0\n" in metrics
        assert requests.get(f"{proxy.admin_url}/readyz", timeout=5).status_code == 200
        secret = volumes[1].root / "token"
        volumes[0].write({"config.yaml": _config(upstream, secret, prefix="/b")})
        assert _wait_for(
            lambda: (
                "\nsigning_proxy_config_last_reload_successful 1.0\n"
                in requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
            ),
            timeout=3,
        )
    finally:
        assert proxy.stop() == 0


def test_sighup_reloads_and_in_flight_request_finishes_on_its_config(
    upstream: Upstream, volumes: tuple[KubeletVolume, KubeletVolume], tmp_path: Path
) -> None:
    """A request keeps the config it arrived with to its end. Devo signs the body, so this
    request is signed only once its body is in, and its body is still coming when the reload
    lands: a handler that looked at the new config after arrival would sign with the new key."""
    key_file = volumes[1].root / "token"
    signer = {"scheme": "devo", "api_key": {"file": str(key_file)}, "api_secret": "s3cr3t"}
    proxy = _start(upstream, volumes, tmp_path, signer=signer)
    first_part_sent, rest_may_go = threading.Event(), threading.Event()

    def body() -> Iterator[bytes]:
        yield b'{"part": 1, '
        first_part_sent.set()
        rest_may_go.wait(20)
        yield b'"last": true}'

    def in_flight() -> bool:
        metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
        return "signing_proxy_in_flight_requests 1.0" in metrics

    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(requests.post, f"{proxy.url}/a/x", data=body(), timeout=30)
            assert first_part_sent.wait(10)
            assert _wait_for(in_flight, timeout=10)  # the handler has the request
            volumes[1].write({"token": "token-two\n"})
            assert proxy.process is not None
            proxy.process.send_signal(signal.SIGHUP)
            assert _wait_for(
                lambda: any(e["reason"] == "SIGHUP" for e in _events(proxy, "config_reloaded")),
                timeout=3,
            )
            fresh = requests.post(f"{proxy.url}/a/x", data=b"{}", timeout=5)
            assert _key(fresh) == "token-two"  # the reload did happen before the old one signs
            rest_may_go.set()
            old = pending.result()
        assert _key(old) == "token-one"  # signed with the config it started on
        assert old.json()["body_len"] == len(b'{"part": 1, "last": true}')
    finally:
        rest_may_go.set()
        assert proxy.stop() == 0


def _key(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    headers = dict((k.lower(), v) for k, v in response.json()["headers"])
    return headers["x-logtrust-reseller-apikey"]


def test_listen_change_says_restart_needed(
    upstream: Upstream, volumes: tuple[KubeletVolume, KubeletVolume], tmp_path: Path
) -> None:
    proxy = _start(upstream, volumes, tmp_path)
    try:
        secret = volumes[1].root / "token"
        volumes[0].write({"config.yaml": _config(upstream, secret, listen="127.0.0.1:1")})
        assert _wait_for(lambda: bool(_events(proxy, "config_restart_needed")), timeout=3)
        assert _events(proxy, "config_restart_needed")[0]["key"] == "listen"
        assert requests.get(f"{proxy.url}/a/x", timeout=5).status_code == 200
    finally:
        assert proxy.stop() == 0


def test_drain_on_sigterm(
    upstream: Upstream,
    volumes: tuple[KubeletVolume, KubeletVolume],
    tmp_path: Path,
    slow_gate: threading.Event,
) -> None:
    import socket

    upstream.handlers["/long"] = _sleeper(upstream, 4.0)
    proxy = _start(upstream, volumes, tmp_path, drain_delay=1.0, extra_args=[])
    assert proxy.process is not None
    with ThreadPoolExecutor(2) as pool:
        pending = pool.submit(requests.get, f"{proxy.url}/a/long", timeout=30)
        assert _wait_for(upstream.slow_started.is_set, 10)  # type: ignore[attr-defined]
        started = time.monotonic()
        proxy.process.send_signal(signal.SIGTERM)
        # Readiness fails at once, while the in-flight request is still running.
        assert _wait_for(
            lambda: requests.get(f"{proxy.admin_url}/readyz", timeout=2).status_code == 503,
            timeout=1.0,
        )
        # During the drain delay new requests are still served ...
        assert requests.get(f"{proxy.url}/a/x", timeout=5).status_code == 200

        # ... after it the listener is closed, while the slow request is still in flight.
        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        assert _wait_for(refused, timeout=2.5)
        assert not pending.done()
        response = pending.result()
        code = proxy.process.wait(30)
    assert response.status_code == 200
    assert code == 0
    assert time.monotonic() - started < 20  # well inside --shutdown-timeout
    assert _events(proxy, "draining")[0]["drain_delay"] == 1.0
    proxy._log.close()


def _sleeper(upstream: Upstream, seconds: float) -> Any:
    upstream.slow_started = threading.Event()  # type: ignore[attr-defined]

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        upstream.slow_started.set()  # type: ignore[attr-defined]
        await asyncio.sleep(seconds)
        return await upstream.echo(request)

    return handler
