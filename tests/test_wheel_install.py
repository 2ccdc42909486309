"""The wheel, installed the way the Dockerfile installs it, runs.

Builds the wheel from the files the Dockerfile copies, installs it into a fresh venv with the
Dockerfile's own commands (asserted to be in the Dockerfile, so the two cannot drift), then
runs the console script from that venv: `--version`, `check` on config/demo.yaml and on an
invalid config, and `run` as the image runs it: the HEALTHCHECK command passes, the probe
endpoints answer, SIGTERM ends it with exit 0 within the drain timeout. Needs PyPI (or the
machine's wheel mirror) for the dependencies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DEMO_CONFIG = REPO / "config" / "demo.yaml"

# What the builder stage copies (COPY pyproject.toml README.md ./ and COPY proxy ./proxy).
BUILD_CONTEXT = ("pyproject.toml", "README.md", "proxy")

# The Dockerfile's commands, with {wheels} and {venv} for /wheels and /opt/venv.
BUILD_WHEEL = "pip wheel --no-deps --wheel-dir {wheels} ."
MAKE_VENV = "python -m venv {venv}"
INSTALL_WHEEL = "{venv}/bin/pip install --no-cache-dir {wheels}/*.whl"
REMOVE_PIP = "{venv}/bin/pip uninstall --yes pip"

pytestmark = pytest.mark.slow


def run(
    command: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def check(result: subprocess.CompletedProcess[str], what: str) -> None:
    assert result.returncode == 0, (
        f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )


def source_version() -> str:
    text = (REPO / "proxy" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    assert match, "proxy/__init__.py has no __version__"
    return match.group(1)


def test_dockerfile_uses_these_commands() -> None:
    dockerfile = DOCKERFILE.read_text()
    for template in (BUILD_WHEEL, MAKE_VENV, INSTALL_WHEEL, REMOVE_PIP):
        command = template.format(wheels="/wheels", venv="/opt/venv")
        assert command in dockerfile, f"the Dockerfile no longer runs {command!r}: update this test"
    assert "COPY pyproject.toml README.md ./" in dockerfile
    assert "COPY proxy ./proxy" in dockerfile


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The venv's bin directory, after the Dockerfile's build and install steps."""
    root = tmp_path_factory.mktemp("wheel-install")
    src, wheels, venv = root / "src", root / "wheels", root / "venv"
    src.mkdir()
    for name in BUILD_CONTEXT:
        path = REPO / name
        assert path.exists(), f"{name} is missing, the image build would fail at COPY"
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)

    python = sys.executable
    build = BUILD_WHEEL.format(wheels=wheels, venv=venv).replace("pip ", f"{python} -m pip ", 1)
    check(run(build, cwd=src), "pip wheel")
    assert len(list(wheels.glob("*.whl"))) == 1, "--no-deps must build exactly one wheel"

    check(run(MAKE_VENV.format(venv=venv).replace("python ", f"{python} ", 1), cwd=root), "venv")
    check(run(INSTALL_WHEEL.format(wheels=wheels, venv=venv), cwd=root), "pip install")
    check(run(REMOVE_PIP.format(venv=venv), cwd=root), "pip uninstall")
    assert not (venv / "bin" / "pip").exists()
    return venv / "bin"


def clean_env(bin_dir: Path) -> dict[str, str]:
    """The image's environment: the venv first on PATH, no bytecode writes, no source tree."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def test_version(installed: Path, tmp_path: Path) -> None:
    result = run(f"{installed}/signing-proxy --version", cwd=tmp_path, env=clean_env(installed))
    check(result, "signing-proxy --version")
    assert source_version() in result.stdout + result.stderr


def test_check_demo_config(installed: Path, tmp_path: Path) -> None:
    venv = installed.parent
    before = {p for p in venv.rglob("*")}
    result = run(
        f"{installed}/signing-proxy check --config {DEMO_CONFIG}",
        cwd=tmp_path,
        env=clean_env(installed),
    )
    check(result, f"signing-proxy check --config {DEMO_CONFIG}")
    # A read-only root filesystem: running must not write into the install (e.g. .pyc files).
    assert {p for p in venv.rglob("*")} == before


def test_check_rejects_invalid_config(installed: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: []\nno_such_key: 1\n")
    result = run(
        f"{installed}/signing-proxy check --config {bad}", cwd=tmp_path, env=clean_env(installed)
    )
    assert result.returncode == 2, result.stdout + result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthcheck_command(admin_port: int) -> list[str]:
    """The Dockerfile's HEALTHCHECK CMD (exec form), aimed at our admin port."""
    match = re.search(r"^\s*CMD (\[.*\])\s*$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, "no exec-form HEALTHCHECK CMD in the Dockerfile"
    command = [
        arg.replace("127.0.0.1:9090", f"127.0.0.1:{admin_port}")
        for arg in json.loads(match.group(1))
    ]
    assert command[0] == "python"
    return command


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def test_runs_like_the_image(installed: Path, tmp_path: Path) -> None:
    """The ENTRYPOINT + CMD shape, on free ports: healthy, ready, scraped, drained on SIGTERM."""
    proxy_port, admin_port = free_port(), free_port()
    env = clean_env(installed)
    process = subprocess.Popen(
        [
            f"{installed}/signing-proxy", "run", "--config", str(DEMO_CONFIG),
            "--listen", f"127.0.0.1:{proxy_port}", "--admin", f"127.0.0.1:{admin_port}",
            "--shutdown-timeout", "5",
        ],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while get_or_none(admin_port, "/readyz") != 200:
            assert process.poll() is None, f"exited early: {process.communicate()}"
            assert time.monotonic() < deadline, "not ready within 30 s"
            time.sleep(0.2)
        # As Docker runs it: `python` from PATH, which the image points at the venv.
        health = subprocess.run(
            healthcheck_command(admin_port),
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert health.returncode == 0, health.stderr
        assert get(admin_port, "/healthz")[0] == 200
        status, metrics = get(admin_port, "/metrics")
        assert status == 200
        assert "# TYPE" in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, stderr


def get_or_none(port: int, path: str) -> int | None:
    try:
        return get(port, path)[0]
    except OSError:
        return None
