"""The commands a user is shown run as written: every `sh` block of the README, in order, in one
shell session (as a user pastes them after the Quick start), then the complete commands quoted
in its prose, and the examples of `signing-proxy --help`.

Each command runs in bash with `failglob` (an unquoted `?` or `*` that matches nothing is an
error, as in zsh), from a copy of the repository's `config/` (the commands run from the
repository's root), with a fresh HOME and no environment beyond PATH: what a command needs must
come from the commands before it. Commands that serve (`signing-proxy run`, `demo`) are started,
must report `started`, and must exit 0 on Ctrl-C (SIGINT). The only change made to what is
shown: fixed loopback ports (`127.0.0.1:8080`) become free ones in the commands and in the
config copy, so parallel runs cannot collide. What cannot run here is skipped by `SKIPPED`,
each with its reason.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import free_port

REPO = Path(__file__).resolve().parents[1]

SKIPPED: dict[str, str] = {  # a command's start -> why it cannot run here
    "python3 -m venv": "creates the virtualenv: the test uses the one it runs from",
    "pip install": "installs from PyPI: tests/test_wheel_install.py builds and installs the wheel",
    "bash scripts/test": "runs the whole test suite, this test among it",
    "kubectl": "needs a Kubernetes cluster",
    "helm": "needs helm and a cluster (scripts/check-deploy.sh lints and renders the chart)",
    "docker": "needs a Docker daemon (CI lints the Dockerfile)",
}
QUICK_START_ACTIVATE = ". .venv/bin/activate"
_ENV_COMMANDS = ("set -a", ". ", "source ", "export ")
_SERVES = re.compile(r"^(?:\S*/)?signing-proxy (?:run|demo)\b")
_LOOPBACK = re.compile(r"127\.0\.0\.1:(\d{2,5})\b")


def readme_blocks() -> list[list[str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```(?:sh|bash|shell)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    return [commands(block) for block in blocks]


_PLACEHOLDER = re.compile(r"\.\.\.|\[|\b(?:F|N|S|HOST|PORT|METHOD|TIME|VALUE|FILE|NAME)\b")


def readme_inline_commands() -> list[str]:
    """Commands quoted in the README's prose that are complete: `signing-proxy` with a flag or
    a redirection and no placeholder (`--config F`, `HOST:PORT`, `...`: those are synopses)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    spans = dict.fromkeys(re.findall(r"`(signing-proxy [^`]+)`", text))
    return [s for s in spans if re.search(r" (?:-|>)", s) and not _PLACEHOLDER.search(s)]


def help_examples() -> list[str]:
    help_text = subprocess.run(
        [sys.executable, "-m", "proxy", "--help"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    section = help_text.split("\nexamples:\n", 1)[1].split("\n\n", 1)[0]
    return commands(section)


def commands(block: str) -> list[str]:
    """A block's commands: continuation lines joined, comment lines dropped, `a && b` split
    (each part is its own step: some steps can run here and some cannot)."""
    joined = re.sub(r"\\\n\s*", "", block)
    found = []
    for line in (raw.strip() for raw in joined.splitlines()):
        if line and not line.startswith("#"):
            found += [part.strip() for part in line.split(" && ")]
    return found


def skip_reason(command: str) -> str | None:
    bare = re.sub(r"^\S*/(?=(pip|signing-proxy) )", "", command)  # .venv/bin/pip -> pip
    return next((why for start, why in SKIPPED.items() if bare.startswith(start)), None)


@dataclass
class Session:
    """One shell session: env-setting commands (`. .venv/bin/activate`, `set -a; . x.env`)
    carry over to the commands after them."""

    cwd: Path
    env: dict[str, str]
    ports: dict[str, str] = field(default_factory=dict)
    prelude: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def free_ports(self, text: str) -> str:
        def swap(match: re.Match[str]) -> str:
            port = self.ports.setdefault(match.group(1), str(free_port()))
            return f"127.0.0.1:{port}"

        return _LOOPBACK.sub(swap, text)

    def run(self, shown: str) -> None:
        reason = skip_reason(shown)
        if reason is not None:
            self.skipped.append((shown, reason))
            return
        command = self.free_ports(shown)
        script = "\n".join([*self.prelude, command])
        if command.startswith(_ENV_COMMANDS):
            self.prelude.append(command)
        if _SERVES.match(command) and "--self-test" not in command:
            self._serve("\n".join([*self.prelude, f"exec {command}"]), shown)
        else:
            done = subprocess.run(
                ["bash", "-O", "failglob", "-c", script],
                cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            if done.returncode != 0:
                self.failures.append(f"{shown}\n  exit {done.returncode}: {done.stderr[-2000:]}")
        self.ran.append(shown)

    def _serve(self, script: str, shown: str) -> None:
        log = self.cwd / "served.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["bash", "-O", "failglob", "-c", script],
                cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 60
                while "started" not in log.read_text(errors="replace"):
                    if process.poll() is not None or time.monotonic() > deadline:
                        self.failures.append(f"{shown}\n  did not start:\n{log.read_text()}")
                        return
                    time.sleep(0.1)
                process.send_signal(signal.SIGINT)  # Ctrl-C
                code = process.wait(30)
                if code != 0:
                    self.failures.append(f"{shown}\n  exit {code} on Ctrl-C:\n{log.read_text()}")
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()


@pytest.fixture
def session(tmp_path: Path) -> Session:
    if sys.prefix == sys.base_prefix:
        pytest.skip("not running from a virtualenv: the Quick start's one is needed")
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "config", root / "config")
    (root / ".venv").symlink_to(sys.prefix)
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
    env["PYTHONUNBUFFERED"] = "1"
    new = Session(root, env)
    for config in (root / "config").glob("*.yaml"):
        config.write_text(new.free_ports(config.read_text()))
    return new


def _report(session: Session) -> str:
    skipped = "\n".join(f"  skipped {command!r}: {why}" for command, why in session.skipped)
    return "\n\n".join(session.failures) + f"\n{skipped}"


def test_readme_commands_run_as_written(session: Session) -> None:
    blocks = readme_blocks()
    assert QUICK_START_ACTIVATE in blocks[0], "the Quick start no longer activates .venv"
    inline = readme_inline_commands()
    assert "signing-proxy schema > config/schema.json" in inline
    for command in [*(c for block in blocks for c in block), *inline]:
        session.run(command)
    assert session.failures == [], _report(session)
    assert any(c.startswith("signing-proxy check") for c in session.ran)
    assert any(c.startswith("signing-proxy sign") for c in session.ran)
    assert any(c == "signing-proxy demo" for c in session.ran)


def test_help_examples_run_as_written(session: Session) -> None:
    examples = help_examples()
    assert len(examples) >= 6, examples
    session.run(QUICK_START_ACTIVATE)  # --help is read after the Quick start
    for command in examples:
        session.run(command)
    assert session.failures == [], _report(session)
    assert session.skipped == []
    served = [c for c in session.ran if c.startswith("signing-proxy run")]
    assert len(served) == 2, session.ran


def test_the_skip_list_skips_only_what_it_names() -> None:
    assert skip_reason("signing-proxy check --config config/example.yaml") is None
    assert skip_reason(".venv/bin/pip install .") is not None
    assert skip_reason("kubectl create secret generic x") is not None
    shown = {command for block in readme_blocks() for command in block}
    assert all(skip_reason(command) is None for command in help_examples())
    assert "signing-proxy demo" in shown
