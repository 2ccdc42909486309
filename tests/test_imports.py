"""The module graph of `proxy/` has no cycle: data flows one way (config -> routing -> signer ->
forward -> relay), and the CLI dispatches to its commands without a command importing it back.

Every import counts, also one inside a function (a lazy import hides a cycle, it does not
remove it). `from package import name` points at the submodule when `name` is one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

PACKAGE = REPO / "proxy"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [
                    f"{node.module}.{alias.name}"
                    if f"{node.module}.{alias.name}" in modules
                    else node.module
                    for alias in node.names
                ]
            graph[name] |= {target for target in targets if target in modules} - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_graph_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_proxy_has_no_import_cycle() -> None:
    graph = _graph()
    assert "proxy.cli" in graph["proxy.__main__"]  # the graph sees the package
    assert "proxy.demo" in graph["proxy.cli"]  # ... and imports inside functions
    assert _cycles(graph) == []


def test_every_command_module_imports_on_its_own() -> None:
    """Each in a fresh interpreter, so an import order that only works after another import
    cannot hide."""
    for module in ("proxy.cli", "proxy.demo", "proxy.signcmd"):
        result = subprocess.run(
            [sys.executable, "-c", f"import {module}"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, (module, result.stderr)


_LOADED = """\
import sys
import proxy.server
from proxy.app import Runtime
from proxy.cli import build_parser
from proxy.config import parse_config
build_parser()
Runtime.build(parse_config(sys.stdin.read()))
print(" ".join(sorted(sys.modules)))
"""


def _modules_for(*signers: dict[str, str]) -> set[str]:
    """The modules a fresh interpreter holds once it has what `run` imports and builds for
    these routes (the command line's parser included)."""
    routes = [
        {"name": f"r{i}", "match": {"path_prefix": f"/r{i}"},
         "upstream": "https://x.example.com", "signer": signer}
        for i, signer in enumerate(signers)
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", _LOADED],
        input=yaml.safe_dump({"routes": routes}),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_a_config_imports_only_the_schemes_it_names() -> None:
    """A bearer sidecar loads neither the other schemes nor their libraries (its footprint:
    bench/footprint.py); a config naming them loads them."""
    bearer = _modules_for({"scheme": "bearer", "token": "t"})
    assert "proxy.app" in bearer  # the run path was imported
    signers = {m for m in bearer if m.startswith("proxy.signers.")}
    assert signers == {"proxy.signers.base", "proxy.signers.bearer", "proxy.signers.field",
                       "proxy.signers.plugins", "proxy.signers.registry"}  # fmt: skip
    assert not {m.split(".")[0] for m in bearer} & {"cryptography", "http_sf", "botocore", "jwt"}

    cavage = {"scheme": "http-signatures-cavage", "key_id": "k", "algorithm": "hmac-sha256",
              "key": "c2VjcmV0"}  # fmt: skip
    mixed = _modules_for({"scheme": "bearer", "token": "t"}, cavage)
    assert {"proxy.signers.cavage", "cryptography", "http_sf"} <= mixed
    assert not {"proxy.signers.jscrambler", "proxy.signers.aws_sigv4", "proxy.signers.hmac"} & mixed
