"""Third-party schemes: `examples/plugin-scheme` pip-installed (into a directory only the
subprocesses here see, so the rest of the suite keeps the built-in registry), then used from a
config: shown by `schema`, validated by `check`, signing through `run` to an upstream that checks
the signature."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml
from aiohttp import web

from tests.conftest import REPO
from tests.support import running_proxy, running_upstream

KEY_ID, SECRET = "example-key-id", "example-secret-Qq12"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    work = tmp_path_factory.mktemp("plugin")
    source = work / "plugin-scheme"
    shutil.copytree(REPO / "examples" / "plugin-scheme", source)  # builds leave files behind
    site = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return {
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]),
        "EXAMPLE_KEY_ID": KEY_ID,
        "EXAMPLE_SECRET": SECRET,
    }


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )  # fmt: skip


def _config(upstream: str, **signer: object) -> dict[str, object]:
    block = {"scheme": "example-hmac", "key_id": {"env": "EXAMPLE_KEY_ID"},
             "secret": {"env": "EXAMPLE_SECRET"}, **signer}  # fmt: skip
    return {"routes": [{"name": "ex", "match": {"path_prefix": "/ex"}, "upstream": upstream,
                        "signer": block}]}  # fmt: skip


def test_schema_shows_the_plugins_config_model(plugin_env: dict[str, str]) -> None:
    schema = json.loads(_cli(plugin_env, "schema").stdout)
    model = schema["$defs"]["ExampleConfig"]
    assert model["properties"]["scheme"]["const"] == "example-hmac"
    assert set(model["required"]) >= {"key_id", "secret"}
    assert "ExampleConfig" not in _cli({}, "schema").stdout  # not installed: not there


def test_check_validates_the_plugins_config(plugin_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config("http://127.0.0.1:1")))
    ok = _cli(plugin_env, "check", "--config", str(path))
    assert ok.returncode == 0, ok.stderr
    assert "plugin schemes: example-hmac" in ok.stdout
    assert "signer example-hmac (key_id=env:EXAMPLE_KEY_ID, secret=env:EXAMPLE_SECRET" in ok.stdout
    path.write_text(yaml.safe_dump(_config("http://127.0.0.1:1", header_prefix=3, extra=1)))
    bad = _cli(plugin_env, "check", "--config", str(path))
    assert bad.returncode == 2
    assert "routes[0].signer.header_prefix" in bad.stderr
    assert "routes[0].signer.extra: unknown key 'extra'" in bad.stderr
    missing = _cli({}, "check", "--config", str(path))
    assert "unknown scheme 'example-hmac'" in missing.stderr


def test_the_plugin_signs_through_run(plugin_env: dict[str, str], tmp_path: Path) -> None:
    with running_upstream() as upstream:

        async def verify(request: web.BaseRequest) -> web.Response:
            ts = request.headers["X-Example-Timestamp"]
            message = f"{request.method}\n{request.path}\n{ts}".encode()
            expected = hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
            ok = request.headers["X-Example-Key"] == KEY_ID and hmac.compare_digest(
                expected, request.headers["X-Example-Signature"]
            )
            return web.json_response({"verified": ok}, status=200 if ok else 401)

        upstream.handlers["/"] = verify
        config = _config(upstream.url)
        with running_proxy(config, tmp_path, env=plugin_env) as proxy:
            response = requests.post(f"{proxy.url}/ex/orders?x=1", data=b"{}", timeout=10)
            assert (response.status_code, response.json()) == (200, {"verified": True})
            assert SECRET not in proxy.logs()


def test_a_broken_plugin_is_reported_not_fatal(tmp_path: Path) -> None:
    info = tmp_path / "site" / "broken_scheme-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-scheme\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[signing_proxy.schemes]\nbroken = no_such_module_here:Signer\n"
    )
    config = _config("http://127.0.0.1:1")
    config["routes"][0]["signer"]["scheme"] = "broken"  # type: ignore[index]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)])}
    result = _cli(env, "check", "--config", str(path))
    assert result.returncode == 2
    assert "warning: plugin scheme broken not loaded" in result.stderr
    assert "unknown scheme 'broken'" in result.stderr
    assert "its plugin failed to load: no_such_module_here:Signer (broken-scheme)" in result.stderr


def test_a_plugin_is_imported_only_when_a_config_names_it(plugin_env: dict[str, str]) -> None:
    code = (
        "import sys, yaml\n"
        "from proxy.app import Runtime\n"
        "from proxy.config import parse_config\n"
        "Runtime.build(parse_config(sys.stdin.read()))\n"
        "print('signing_proxy_example_scheme' in sys.modules)\n"
    )
    bearer = {"routes": [{"name": "b", "match": {"path_prefix": "/b"},
                          "upstream": "http://127.0.0.1:1",
                          "signer": {"scheme": "bearer", "token": "t"}}]}  # fmt: skip
    for config, imported in ((bearer, "False"), (_config("http://127.0.0.1:1"), "True")):
        done = subprocess.run(
            [sys.executable, "-c", code], input=yaml.safe_dump(config),
            capture_output=True, text=True, timeout=60, env={**os.environ, **plugin_env},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == imported
