"""Hot reload (SIGHUP and file changes, kubelet-style symlink swaps) and the Kubernetes drain."""

from __future__ import annotations

import asyncio
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
import trustme
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


@pytest.mark.smoke
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
        assert proxy.events("config_reloaded")
    finally:
        assert proxy.stop() == 0


def test_invalid_change_is_rejected_and_old_routes_keep_working(
    upstream: Upstream, volumes: tuple[KubeletVolume, KubeletVolume], tmp_path: Path
) -> None:
    proxy = _start(upstream, volumes, tmp_path)
    try:
        volumes[0].write({"config.yaml": "routes:\n  - name: BROKEN\n    tiemout: 1\n"})
        assert _wait_for(lambda: bool(proxy.events("config_reload_failed")), timeout=3)
        failure = proxy.events("config_reload_failed")[0]
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


@pytest.mark.smoke
def test_rotated_secret_with_a_line_break_is_refused_and_the_old_one_kept(
    upstream: Upstream, volumes: tuple[KubeletVolume, KubeletVolume], tmp_path: Path
) -> None:
    """A header-bound secret with a control character once passed reload and then failed every
    request (aiohttp's plain-text 500); it is a reload failure naming the key, never the value."""
    proxy = _start(upstream, volumes, tmp_path)
    try:
        volumes[1].write({"token": "token-Zt5\nsecond-line\n"})
        assert _wait_for(lambda: bool(proxy.events("config_reload_failed")), timeout=3)
        problems = " ".join(proxy.events("config_reload_failed")[0]["problems"])
        assert "routes[0].signer.token: a control character (U+000A)" in problems
        assert _auth(requests.get(f"{proxy.url}/a/x", timeout=5)) == "Bearer token-one"
        volumes[1].write({"token": "token-two\n"})
        assert _wait_for(
            lambda: _auth(requests.get(f"{proxy.url}/a/x", timeout=5)) == "Bearer token-two",
            timeout=3,
        )
        assert "Zt5" not in proxy.logs()
    finally:
        assert proxy.stop() == 0


def test_fixing_a_file_a_refused_config_names_applies_it(
    upstream: Upstream, volumes: tuple[KubeletVolume, KubeletVolume], tmp_path: Path
) -> None:
    """A new route names a CA file that is not PEM yet: refused. Fixing that file alone (a file
    the running config does not name), with no edit of the config, applies the config."""
    proxy = _start(upstream, volumes, tmp_path)
    try:
        ca_file = tmp_path / "ca.pem"
        ca_file.write_text("not yet\n")
        config = yaml.safe_load(_config(upstream, volumes[1].root / "token"))
        config["routes"].append(
            {
                "name": "b",
                "match": {"path_prefix": "/b"},
                "upstream": upstream.url,
                "signer": {"scheme": "bearer", "token": "b"},
                "tls": {"ca_file": str(ca_file)},
            }
        )
        volumes[0].write({"config.yaml": yaml.safe_dump(config)})
        assert _wait_for(lambda: bool(proxy.events("config_reload_failed")), timeout=3)
        assert requests.get(f"{proxy.url}/b/x", timeout=5).status_code == 403
        trustme.CA().cert_pem.write_to_path(str(ca_file))
        assert _wait_for(
            lambda: requests.get(f"{proxy.url}/b/x", timeout=5).status_code == 200, timeout=3
        ), proxy.logs()
        assert len(proxy.events("config_reload_failed")) == 1
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
                lambda: any(e["reason"] == "SIGHUP" for e in proxy.events("config_reloaded")),
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
        assert _wait_for(lambda: bool(proxy.events("config_restart_needed")), timeout=3)
        assert proxy.events("config_restart_needed")[0]["key"] == "listen"
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
    assert proxy.events("draining")[0]["drain_delay"] == 1.0
    proxy._log.close()


def _sleeper(upstream: Upstream, seconds: float) -> Any:
    upstream.slow_started = threading.Event()  # type: ignore[attr-defined]

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        upstream.slow_started.set()  # type: ignore[attr-defined]
        await asyncio.sleep(seconds)
        return await upstream.echo(request)

    return handler


@pytest.mark.smoke
def test_unusable_ca_file_is_a_counted_failure_and_later_changes_still_apply(
    upstream: Upstream, volumes: tuple[KubeletVolume, KubeletVolume], tmp_path: Path
) -> None:
    """A readable CA file that is not PEM, arriving by reload, once killed the watcher silently:
    no log, no failure count, and no later change (a rotated token) was ever applied."""
    ca = trustme.CA()
    good_ca = ca.cert_pem.bytes().decode()
    config_volume, secret_volume = volumes
    secret_volume.write({"token": "token-one\n", "ca.pem": good_ca})
    config = yaml.safe_load(_config(upstream, secret_volume.root / "token"))
    config["routes"].append(
        {
            "name": "tls",
            "match": {"path_prefix": "/tls"},
            "upstream": "https://127.0.0.1:1",
            "signer": {"scheme": "bearer", "token": "t"},
            "tls": {"ca_file": str(secret_volume.root / "ca.pem")},
        }
    )
    config_volume.write({"config.yaml": yaml.safe_dump(config)})
    (tmp_path / "config.yaml").symlink_to(config_volume.root / "config.yaml")
    proxy = ProxyProcess({}, tmp_path, write_config=False).start()
    try:
        assert _auth(requests.get(f"{proxy.url}/a/x", timeout=5)) == "Bearer token-one"

        def failures() -> list[dict[str, Any]]:
            return proxy.events("config_reload_failed")

        # By the file watcher: the CA bundle is replaced by something readable but not PEM.
        secret_volume.write({"token": "token-one\n", "ca.pem": "not a certificate\n"})
        assert _wait_for(lambda: len(failures()) == 1, timeout=5), proxy.logs()
        assert "routes[1].tls.ca_file" in " ".join(failures()[0]["problems"])
        assert _auth(requests.get(f"{proxy.url}/a/x", timeout=5)) == "Bearer token-one"
        # By SIGHUP: the same failure, counted again; the process keeps serving.
        assert proxy.process is not None
        proxy.process.send_signal(signal.SIGHUP)
        assert _wait_for(lambda: len(failures()) == 2, timeout=5), proxy.logs()
        assert failures()[1]["reason"] == "SIGHUP"
        metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
        assert 'signing_proxy_config_reloads_total{result="failure"} 2.0' in metrics
        assert requests.get(f"{proxy.admin_url}/readyz", timeout=5).status_code == 200

        # The next good change (CA fixed, token rotated) is applied.
        secret_volume.write({"token": "token-two\n", "ca.pem": good_ca})
        assert _wait_for(
            lambda: _auth(requests.get(f"{proxy.url}/a/x", timeout=5)) == "Bearer token-two",
            timeout=5,
        ), proxy.logs()
        assert "Traceback" not in proxy.logs()
    finally:
        assert proxy.stop() == 0


async def test_watcher_outlives_a_failing_change_handler(tmp_path: Path) -> None:
    from proxy.reload import ConfigWatcher

    watched = tmp_path / "watched"
    watched.write_text("one")
    calls: list[str] = []

    async def on_change() -> None:
        calls.append(watched.read_text())
        if len(calls) == 1:
            raise RuntimeError("a bug in the handler")

    watcher = ConfigWatcher([watched], on_change, interval=0.02)
    watcher.start()
    try:
        watched.write_text("two")
        for _ in range(200):
            if calls:
                break
            await asyncio.sleep(0.01)
        watched.write_text("three")
        for _ in range(200):
            if len(calls) == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await watcher.stop()
    assert calls == ["two", "three"]


async def test_an_unexpected_error_while_reloading_is_a_counted_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from proxy import server as server_module
    from proxy.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(
        "routes: [{name: a, match: {path_prefix: /}, upstream: 'http://127.0.0.1:1', "
        "signer: {scheme: bearer, token: t}}]"
    )
    proxy = server_module.ProxyServer(load_config(path), config_path=path)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret-in-message-Kq1")

    monkeypatch.setattr(server_module, "build_runtime", broken)
    assert await proxy.reload("test") is False
    registry = proxy.metrics.registry
    sample = "signing_proxy_config_reloads_total"
    assert registry.get_sample_value(sample, {"result": "failure"}) == 1.0
    logged = capsys.readouterr()
    assert "unexpected RuntimeError while reloading" in logged.out + logged.err
    assert "Kq1" not in logged.out + logged.err  # the type, never the message
    monkeypatch.undo()
    assert await proxy.reload("test") is True  # the next good reload applies
    assert registry.get_sample_value(sample, {"result": "success"}) == 1.0


async def test_a_signer_failing_to_start_on_reload_keeps_the_config_and_closes_the_new_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from proxy import server as server_module
    from proxy.config import load_config
    from proxy.signers.base import Signer

    def routes(token: str) -> str:
        return (
            "routes: ["
            + ", ".join(
                f"{{name: {name}, match: {{path_prefix: /{name}}}, upstream: 'http://127.0.0.1:1', "
                f"signer: {{scheme: bearer, token: {token}}}}}"
                for name in ("a", "b")
            )
            + "]"
        )

    path = tmp_path / "c.yaml"
    path.write_text(routes("t1"))
    proxy = server_module.ProxyServer(load_config(path), config_path=path)
    before = proxy.handler.runtime
    started: list[int] = []
    closed: list[int] = []

    async def start(signer: Signer[Any]) -> None:
        if started:
            raise RuntimeError("the second signer fails")
        started.append(id(signer))

    async def close(signer: Signer[Any]) -> None:
        closed.append(id(signer))

    monkeypatch.setattr(Signer, "start", start)
    monkeypatch.setattr(Signer, "close", close)
    path.write_text(routes("t2"))  # both routes change: two new signers to start
    assert await proxy.reload("test") is False
    assert proxy.handler.runtime is before  # the running config stays
    assert len(started) == 1
    assert set(started) <= set(closed)  # what the refused config started is stopped
    assert not {id(route.signer) for route in before.table.routes} & set(closed)
    logged = capsys.readouterr()
    assert "unexpected RuntimeError while reloading" in logged.out + logged.err
