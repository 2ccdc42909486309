"""The process: graceful stop on SIGTERM/SIGINT, clear failures, the CLI's own surface."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from aiohttp import web

from proxy.server import GC_YOUNG_THRESHOLD
from tests.support import ProxyProcess, one_route_config, running_upstream


@pytest.mark.smoke
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_in_flight_request_finishes_then_exit_0(tmp_path: Path, sig: int) -> None:
    arrived = threading.Event()
    with running_upstream() as upstream:

        async def slow(request: web.BaseRequest) -> web.Response:
            arrived.set()
            await asyncio.sleep(1.5)
            return web.Response(text="finished")

        upstream.handlers["/slow"] = slow
        proxy = ProxyProcess(one_route_config(upstream.url), tmp_path).start()
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(requests.get, f"{proxy.url}/slow", timeout=30)
            assert arrived.wait(10)
            code = proxy.stop(sig, timeout=30)
            response = pending.result()
    assert response.status_code == 200
    assert response.text == "finished"
    assert code == 0
    assert '"event":"stopped"' in proxy.logs().replace(" ", "")


def test_address_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "c.yaml"
        config.write_text(
            "routes: [{name: a, match: {path_prefix: /}, upstream: 'http://127.0.0.1:1', "
            "signer: {scheme: bearer, token: t}}]"
        )
        result = subprocess.run(
            [sys.executable, "-m", "proxy", "run", "--config", str(config),
             "--listen", f"127.0.0.1:{port}", "--admin", "127.0.0.1:0"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert result.returncode == 1
    assert "cannot start" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.smoke
def test_invalid_config_at_run_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("routes: []\n")
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "routes" in result.stderr


def test_version_and_help() -> None:
    from proxy import __version__

    version = subprocess.run(
        [str(Path(sys.executable).parent / "signing-proxy"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert version.stdout.strip() == f"signing-proxy {__version__}"
    help_text = subprocess.run(
        [sys.executable, "-m", "proxy", "--help"], capture_output=True, text=True, check=True,
        timeout=30,
    ).stdout  # fmt: skip
    for word in ("run", "check", "sign", "demo", "examples:", "HTTP_PROXY"):
        assert word in help_text
    run_help = subprocess.run(
        [sys.executable, "-m", "proxy", "run", "--help"], capture_output=True, text=True,
        check=True, timeout=30,
    ).stdout  # fmt: skip
    for flag in ("--config", "--listen", "--admin", "--log-format", "--shutdown-timeout"):
        assert flag in run_help


def test_demo_self_test_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "demo", "--self-test"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 3


SETTLED_GC = """
import gc, weakref
from proxy.server import GC_YOUNG_THRESHOLD, settle_garbage_collector, thaw_garbage_collector


class Node:
    pass


def cycle():
    node = Node()
    node.self = node  # a cycle: only the collector can free it
    return node


startup_config = cycle()  # lives from start-up until a reload replaces it
settle_garbage_collector()
assert gc.get_freeze_count() > 1000, gc.get_freeze_count()  # the start-up objects
assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD, gc.get_threshold()

node = cycle()
alive = weakref.ref(node)
del node
gc.collect()
assert alive() is None, "cyclic garbage made after the freeze must still be collected"

replaced = weakref.ref(startup_config)
del startup_config  # a reload replaced it: garbage, but frozen
gc.collect()
assert replaced() is not None  # what thawing is for
thaw_garbage_collector()
assert gc.get_freeze_count() == 0
gc.collect()
assert replaced() is None, "a replaced start-up object must be collectable after a reload"
print("ok")
"""


def test_garbage_collector_settled_after_start_and_thawed_after_reload() -> None:
    # In a subprocess: freezing pytest's own heap would change every later test.
    done = subprocess.run(
        [sys.executable, "-c", SETTLED_GC], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok", done.stdout


SETTLED_BY_RUN = """
import gc, sys, threading, time, urllib.request
from proxy.cli import main

admin = sys.argv[2]


def watch() -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"http://{admin}/readyz", timeout=1).status == 200:
                break
        except OSError:
            time.sleep(0.02)
    while gc.get_freeze_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    print("frozen", gc.get_freeze_count(), "threshold", gc.get_threshold()[0], flush=True)
    import os, signal
    os.kill(os.getpid(), signal.SIGTERM)


threading.Thread(target=watch, daemon=True).start()
sys.exit(main(["run", "--config", sys.argv[1], "--listen", "127.0.0.1:0", "--admin", admin,
               "--drain-delay", "0"]))
"""


def test_run_settles_the_garbage_collector_once_ready(tmp_path: Path) -> None:
    """`run` settles the collector a moment after it is ready (not before the first /readyz
    answer: that full collection would delay the pod's start)."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "routes:\n  - {name: r, match: {path_prefix: /r}, upstream: http://127.0.0.1:9,\n"
        "     signer: {scheme: bearer, token: t}}\n"
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        admin = f"127.0.0.1:{sock.getsockname()[1]}"
    done = subprocess.run(
        [sys.executable, "-c", SETTLED_BY_RUN, str(config), admin],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    _, frozen, _, threshold = done.stdout.split()
    assert int(frozen) > 1000, done.stdout  # the start-up objects
    assert int(threshold) == GC_YOUNG_THRESHOLD, done.stdout


@pytest.mark.smoke
@pytest.mark.parametrize("workers", ["1", "2"])
def test_unusable_ca_file_at_run_exits_2_with_the_key_path(tmp_path: Path, workers: str) -> None:
    """`check` and `run` build the same things: a CA file that validates (it exists) but is not
    PEM is refused before anything listens, with its key path, never a traceback."""
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        "routes:\n"
        "  - name: a\n"
        "    match: {path_prefix: /}\n"
        "    upstream: https://127.0.0.1:1\n"
        "    signer: {scheme: bearer, token: t}\n"
        f"    tls: {{ca_file: {tmp_path / 'ca.pem'}}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "run", "--config", str(config), "--workers", workers,
         "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"{config}:6: routes[0].tls.ca_file:" in result.stderr
    assert "is not a PEM bundle of CA certificates" in result.stderr
    assert "Traceback" not in result.stderr
