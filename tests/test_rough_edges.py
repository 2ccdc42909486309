"""A new user's small stumbles: the demo's printed commands paste into any shell (zsh refuses an
unquoted `?`), the demo starts where its ports are taken (or where `--listen`/`--admin` say),
and a duplicate YAML key is reported with the file's other problems, not instead of them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.config import ConfigError, parse_config


def test_a_duplicate_key_is_reported_with_every_other_problem(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "listen: localhost\n"  # 1: not HOST:PORT
        "routes:\n"
        "  - name: a\n"
        "    match: {path_prefix: /a}\n"
        "    upstream: https://a.example.com\n"
        "    signer: {scheme: bearer, token: {env: SIGNING_PROXY_TEST_UNSET_VAR}}\n"  # 6
        "    timout: {connect: 1}\n"  # 7: a typo
        "    upstream: https://b.example.com\n"  # 8: the duplicate
    )
    env = {k: v for k, v in os.environ.items() if k != "SIGNING_PROXY_TEST_UNSET_VAR"}
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 2
    assert "4 problem(s)" in result.stderr, result.stderr
    for line, expected in [
        (1, "listen: 'localhost' must be HOST:PORT"),
        (6, "routes[0].signer.token: environment variable SIGNING_PROXY_TEST_UNSET_VAR"),
        (7, "routes[0].timout: unknown key 'timout'"),
        (8, "routes[0].upstream: duplicate key 'upstream'"),
    ]:
        assert f"c.yaml:{line}: {expected}" in result.stderr, result.stderr


def test_the_first_of_two_duplicate_keys_is_the_one_validated() -> None:
    text = (
        "routes: [{name: a, match: {path_prefix: /a}, upstream: 'https://a.example.com',"
        " signer: {scheme: bearer, token: t}}]\n"
        "admin: 127.0.0.1:1\n"
        "admin: not-an-address\n"
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    assert [str(p) for p in raised.value.problems] == ["3: admin: duplicate key 'admin'"]


def _shells() -> list[list[str]]:
    """Shells to paste into: bash with failglob (an unmatched `?` or `*` is an error, as in
    zsh), and zsh itself where it is installed."""
    shells = [["bash", "-O", "failglob", "-c"]]
    if shutil.which("zsh"):
        shells.append(["zsh", "-f", "-c"])
    return shells


@contextlib.contextmanager
def _held(port: int) -> Iterator[bool]:
    """Hold 127.0.0.1:`port` if it is free (True), so the demo must move elsewhere."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            yield False  # taken by someone else: the demo must move all the same
            return
        yield True


@contextlib.contextmanager
def _demo(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """`signing-proxy demo` in a subprocess, its stdout read up to the end of its instructions."""
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "demo", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if "Stop: Ctrl-C" in line or time.monotonic() > deadline:
                break
        assert any("Stop: Ctrl-C" in line for line in lines), "\n".join(lines)
        yield process, lines
    finally:
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()


def _pasted(lines: list[str]) -> list[str]:
    """The command lines the demo prints under its `# title` lines."""
    return [
        lines[i + 1].strip() for i, line in enumerate(lines[:-1]) if line.strip().startswith("# ")
    ]


def test_demo_commands_paste_into_zsh_and_bash_and_work(tmp_path: Path) -> None:
    with (
        _held(8081),
        _demo(tmp_path, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0") as (
            _,
            lines,
        ),
    ):
        commands = _pasted(lines)
        assert len(commands) == 3, lines
        assert all(command.startswith("curl ") for command in commands)
        listen = re.search(r"proxy on http://(127\.0\.0\.1:\d+)", "\n".join(lines))
        assert listen is not None
        assert not listen.group(1).endswith(":0")
        answers = []
        for command in commands:
            for shell in _shells():
                done = subprocess.run(
                    [*shell, command], capture_output=True, text=True, timeout=30,
                    cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)},
                )  # fmt: skip
                assert done.returncode == 0, (shell, command, done.stderr)
                answers.append(json.loads(done.stdout))
        metrics = re.search(r"Metrics: (curl .*?)\s{2,}Stop", "\n".join(lines))
        assert metrics is not None
        scraped = subprocess.run(
            ["bash", "-O", "failglob", "-c", metrics.group(1)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "signing_proxy_requests_total" in scraped.stdout
    reverse, forward, refused = answers[:: len(_shells())]
    headers = {k.lower(): v for k, v in reverse["headers"].items()}
    assert headers["authorization"] == "Bearer demo-token"
    assert reverse["query"] == "x=1"
    assert {k.lower(): v for k, v in forward["headers"].items()}["x-api-key"] == "demo-api-key"
    assert refused["error"]["code"] == "no_route"


def test_demo_moves_off_a_taken_port_and_says_so(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        with _demo(tmp_path, "--listen", busy, "--admin", "127.0.0.1:0") as (_, lines):
            text = "\n".join(lines)
            assert f"{busy} is in use; using 127.0.0.1:" in text
            assert f"proxy on http://{busy}" not in text
            command = _pasted(lines)[0]
            done = subprocess.run(
                ["bash", "-c", command], capture_output=True, text=True, timeout=30
            )
            assert done.returncode == 0
            assert json.loads(done.stdout)["headers"]["Authorization"] == "Bearer demo-token"
