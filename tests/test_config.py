"""The config file: bad configs are rejected with key path and line; good ones load immutably."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pydantic
import pytest
import trustme
import yaml

from proxy.cli import config_schema_json
from proxy.config import ConfigError, load_config, parse_config

pytestmark = pytest.mark.smoke  # also run on the lowest dependency versions (.ci/run)

REPO = Path(__file__).resolve().parents[1]
GOOD_ROUTE = "{name: ok, match: {path_prefix: /ok}, upstream: 'https://api.example.com', signer: {scheme: bearer, token: t}}"  # noqa: E501


def _problems(text: str) -> list[tuple[str, int, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), "c.yaml")
    return [(p.path, p.line, p.message) for p in info.value.problems]


# (name, YAML, expected key path, expected line, words the message must contain)
BAD_CONFIGS = [
    ("no-routes", "listen: 127.0.0.1:8080\n", "routes", 1, "required"),
    ("empty-routes", "routes: []\n", "routes", 1, "at least 1"),
    ("not-a-mapping", "- a\n- b\n", "", 1, "mapping"),
    ("bad-yaml", "routes: [\n  {name: x\n", "", 3, "invalid YAML"),
    (
        "unknown-top-key",
        f"routes: [{GOOD_ROUTE}]\nlisten_port: 8080\n",
        "listen_port",
        2,
        "unknown key",
    ),
    ("bad-listen", f"listen: localhost\nroutes: [{GOOD_ROUTE}]\n", "listen", 1, "HOST:PORT"),
    ("bad-admin-port", f"admin: 127.0.0.1:70000\nroutes: [{GOOD_ROUTE}]\n", "admin", 1, "port"),
    (
        "duplicate-yaml-key",
        f"routes: [{GOOD_ROUTE}]\nlisten: 127.0.0.1:1\nlisten: 127.0.0.1:2\n",
        "listen",
        3,
        "duplicate key",
    ),
    (
        "bad-route-name",
        """\
        routes:
          - name: Devo API
            match: {path_prefix: /d}
            upstream: https://x.example.com
            signer: {scheme: bearer, token: t}
        """,
        "routes[0].name",
        2,
        "[a-z0-9_-]+",
    ),
    (
        "duplicate-route-name",
        f"routes:\n  - {GOOD_ROUTE}\n  - {GOOD_ROUTE}\n",
        "routes[1].name",
        3,
        "duplicate route name",
    ),
    (
        "unknown-route-key",
        """\
        routes:
          - name: a
            match: {path_prefix: /d}
            upstream: https://x.example.com
            signer: {scheme: bearer, token: t}
            timout: {connect: 1}
        """,
        "routes[0].timout",
        6,
        "unknown key",
    ),
    (
        "unknown-signer-field",
        """\
        routes:
          - name: a
            match: {path_prefix: /d}
            upstream: https://x.example.com
            signer:
              scheme: bearer
              tokn: t
        """,
        "routes[0].signer.tokn",
        7,
        "unknown key",
    ),
    (
        "missing-signer-field",
        """\
        routes:
          - name: a
            match: {path_prefix: /d}
            upstream: https://x.example.com
            signer:
              scheme: devresults
              token: t
        """,
        "routes[0].signer.secret",
        5,
        "required",
    ),
    (
        "unknown-scheme",
        """\
        routes:
          - name: a
            match: {path_prefix: /d}
            upstream: https://x.example.com
            signer: {scheme: hmac-magic, token: t}
        """,
        "routes[0].signer",
        5,
        "unknown scheme 'hmac-magic'",
    ),
    (
        "scheme-missing",
        """\
        routes:
          - name: a
            match: {path_prefix: /d}
            upstream: https://x.example.com
            signer: {token: t}
        """,
        "routes[0].signer",
        5,
        "scheme is required (one of: bearer, header,",
    ),
    (
        "signer-not-a-mapping",
        """\
        routes:
          - name: a
            match: {path_prefix: /d}
            upstream: https://x.example.com
            signer: bearer
        """,
        "routes[0].signer",
        5,
        "Input should be a valid dictionary or object to extract fields from",
    ),
    (
        "scheme-not-a-string",
        """\
        routes:
          - name: a
            match: {path_prefix: /d}
            upstream: https://x.example.com
            signer: {scheme: [bearer], token: t}
        """,
        "routes[0].signer",
        5,
        "unknown scheme \"['bearer']\" (known: bearer, header,",
    ),
    (
        "missing-env-secret",
        """\
        routes:
          - name: a
            match: {path_prefix: /d}
            upstream: https://x.example.com
            signer:
              scheme: devresults
              token: t
              secret: {env: SIGNING_PROXY_TEST_UNSET_VAR}
        """,
        "routes[0].signer.secret",
        8,
        "SIGNING_PROXY_TEST_UNSET_VAR is not set",
    ),
    (
        "missing-file-secret",
        """\
        routes:
          - name: a
            match: {path_prefix: /d}
            upstream: https://x.example.com
            signer: {scheme: bearer, token: {file: /nonexistent/token}}
        """,
        "routes[0].signer.token",
        5,
        "/nonexistent/token does not exist",
    ),
    (
        "bad-secret-shape",
        """\
        routes:
          - name: a
            match: {path_prefix: /d}
            upstream: https://x.example.com
            signer: {scheme: bearer, token: {vault: x}}
        """,
        "routes[0].signer.token",
        5,
        "{env: NAME} or {file: PATH}",
    ),
    (
        "empty-match",
        """\
        routes:
          - name: a
            match: {}
            upstream: https://x.example.com
            signer: {scheme: bearer, token: t}
        """,
        "routes[0].match",
        3,
        "host and/or path_prefix",
    ),
    (
        "bad-prefix",
        """\
        routes:
          - name: a
            match: {path_prefix: devresults}
            upstream: https://x.example.com
            signer: {scheme: bearer, token: t}
        """,
        "routes[0].match.path_prefix",
        3,
        "must start with /",
    ),
    (
        "bad-host",
        """\
        routes:
          - name: a
            match: {host: "api example.com"}
            signer: {scheme: bearer, token: t}
        """,
        "routes[0].match.host",
        3,
        "not a valid host",
    ),
    (
        "upstream-needed-for-wildcard",
        """\
        routes:
          - name: a
            match: {host: "*.example.com"}
            signer: {scheme: bearer, token: t}
        """,
        "routes[0]",
        2,
        "upstream is required",
    ),
    (
        "bad-upstream-scheme",
        """\
        routes:
          - name: a
            match: {path_prefix: /a}
            upstream: ftp://files.example.com
            signer: {scheme: bearer, token: t}
        """,
        "routes[0].upstream",
        4,
        "http:// or https://",
    ),
    (
        "negative-timeout",
        """\
        routes:
          - name: a
            match: {path_prefix: /a}
            upstream: https://x.example.com
            signer: {scheme: bearer, token: t}
            timeout: {connect: -1}
        """,
        "routes[0].timeout.connect",
        6,
        "greater than 0",
    ),
    (
        "bad-max-body",
        """\
        routes:
          - name: a
            match: {path_prefix: /a}
            upstream: https://x.example.com
            signer: {scheme: bearer, token: t}
            max_body_bytes: lots
        """,
        "routes[0].max_body_bytes",
        6,
        "integer",
    ),
    (
        "missing-ca-file",
        """\
        routes:
          - name: a
            match: {path_prefix: /a}
            upstream: https://x.example.com
            signer: {scheme: bearer, token: t}
            tls: {ca_file: /nonexistent/ca.pem}
        """,
        "routes[0].tls.ca_file",
        6,
        "does not exist",
    ),
    (
        "managed-header-edit",
        """\
        routes:
          - name: a
            match: {path_prefix: /a}
            upstream: https://x.example.com
            signer: {scheme: bearer, token: t}
            headers: {set: {Host: evil.example.com}}
        """,
        "routes[0].headers.set",
        6,
        "managed by the proxy",
    ),
    (
        "bad-devo-key-header",
        """\
        routes:
          - name: a
            match: {path_prefix: /a}
            upstream: https://x.example.com
            signer: {scheme: devo, api_key: k, api_secret: s, key_header: tenant}
        """,
        "routes[0].signer.key_header",
        5,
        "reseller",
    ),
    (
        "trace-retried",
        """\
        routes:
          - name: a
            match: {path_prefix: /a}
            upstream: https://x.example.com
            signer: {scheme: bearer, token: t}
            retries: {attempts: 2, methods: [GET, trace]}
        """,
        "routes[0].retries.methods",
        6,
        "TRACE is refused",
    ),
    (
        "zero-upstream-connections",
        """\
        routes:
          - name: a
            match: {path_prefix: /a}
            upstream: https://x.example.com
            signer: {scheme: bearer, token: t}
            max_upstream_connections: 0
        """,
        "routes[0].max_upstream_connections",
        6,
        "greater than 0",
    ),
    (
        "zero-header-timeout",
        """\
        request_limits: {header_timeout: 0}
        routes:
          - name: a
            match: {path_prefix: /a}
            upstream: https://x.example.com
            signer: {scheme: bearer, token: t}
        """,
        "request_limits.header_timeout",
        1,
        "greater than 0",
    ),
]


@pytest.mark.parametrize(
    ("text", "path", "line", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_CONFIGS],
)
def test_bad_config_names_key_path_and_line(text: str, path: str, line: int, words: str) -> None:
    problems = _problems(text)
    assert any(p == path and ln == line and words in msg for p, ln, msg in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    problems = _problems(
        """\
        listen: nowhere
        routes:
          - name: BAD
            match: {path_prefix: x}
            signer: {scheme: bearer}
        """
    )
    assert {p for p, _, _ in problems} >= {
        "listen",
        "routes[0].name",
        "routes[0].match.path_prefix",
        "routes[0].signer.token",
    }


def test_secret_sources_and_newline_stripping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file-9d2e\n")
    monkeypatch.setenv("CFG_TEST_TOKEN", "from-env-41c7")
    config = parse_config(
        f"""
routes:
  - {{name: a, match: {{path_prefix: /a}}, upstream: 'https://x.example.com',
      signer: {{scheme: devresults, token: {{env: CFG_TEST_TOKEN}},
                secret: {{file: {secret_file}}}}}}}
"""
    )
    signer = config.routes[0].signer
    assert signer.token.reveal() == "from-env-41c7"
    assert signer.secret.reveal() == "from-file-9d2e"
    shown = repr(config) + str(config) + config.model_dump_json()
    assert "from-env-41c7" not in shown
    assert "from-file-9d2e" not in shown


def test_errors_never_show_a_secret() -> None:
    secret = "literal-secret-e8a0f1"
    problems = _problems(
        f"""\
        routes:
          - name: a
            match: {{path_prefix: /a}}
            upstream: https://x.example.com
            signer: {{scheme: bearer, token: {{literal: {secret}}}}}
          - name: b
            match: {{path_prefix: /b}}
            upstream: https://x.example.com
            signer: {{scheme: header, name: "bad name", value: {secret}}}
        """
    )
    assert problems
    assert secret not in repr(problems)


def test_defaults_and_immutability() -> None:
    config = parse_config(f"routes: [{GOOD_ROUTE}]")
    assert config.listen == "127.0.0.1:8080"
    assert config.admin == "127.0.0.1:9090"
    route = config.routes[0]
    assert route.max_body_bytes == 10 * 1024 * 1024
    assert route.tls.verify is True
    assert route.timeout.connect > 0
    with pytest.raises(pydantic.ValidationError):
        route.name = "changed"  # type: ignore[misc]


def test_upstream_defaults_to_https_exact_host() -> None:
    config = parse_config(
        "routes: [{name: a, match: {host: Demo.DevResults.com}, "
        "signer: {scheme: bearer, token: t}}]"
    )
    assert config.routes[0].upstream == "https://demo.devresults.com"


@pytest.mark.exact_versions  # older pydantic writes an equivalent schema differently
def test_schema_is_current() -> None:
    committed = (REPO / "config" / "schema.json").read_text()
    assert json.loads(committed) == json.loads(config_schema_json()), (
        "config/schema.json is stale: run `signing-proxy schema > config/schema.json`"
    )


@pytest.mark.parametrize(
    "name",
    [
        "demo.yaml",
        "example.yaml",
        *sorted(f"hmac/{p.name}" for p in (REPO / "config/hmac").glob("*.yaml")),
    ],
)
def test_bundled_configs_follow_the_schema(name: str) -> None:
    path = REPO / "config" / name
    if not path.exists():
        pytest.fail(f"{path} is missing")
    schema = json.loads((REPO / "config" / "schema.json").read_text())
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_check_valid_config_lists_routes_without_secrets(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "routes: [{name: a, match: {path_prefix: /a}, upstream: 'https://x.example.com', "
        "signer: {scheme: bearer, token: literal-token-5a5a}}]"
    )
    result = _cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "a: path_prefix=/a -> https://x.example.com" in result.stdout
    assert "token=literal" in result.stdout
    assert "literal-token-5a5a" not in result.stdout + result.stderr


def test_check_invalid_config_exits_2_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "routes:\n  - name: a\n    match: {path_prefix: /a}\n    upstream: https://x.example.com\n"
        "    signer: {scheme: bearer, token: {env: SIGNING_PROXY_TEST_UNSET_VAR}}\n"
        "    max_body_bytes: -5\n"
    )
    result = _cli("check", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}:5: routes[0].signer.token: environment variable" in result.stderr
    assert f"{path}:6: routes[0].max_body_bytes:" in result.stderr


def test_check_builds_what_run_builds(tmp_path: Path) -> None:
    """A CA file that exists but is not PEM passed `check` and then crashed `run`: `check`
    now builds the TLS contexts and signers too, and names the key and its line."""
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    path = tmp_path / "c.yaml"
    path.write_text(
        f"routes:\n  - {GOOD_ROUTE}\n"
        "  - name: b\n    match: {path_prefix: /b}\n    upstream: https://x.example.com\n"
        "    signer: {scheme: bearer, token: t}\n"
        f"    tls:\n      ca_file: {tmp_path / 'ca.pem'}\n"
    )
    result = _cli("check", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}:8: routes[1].tls.ca_file: {tmp_path / 'ca.pem'} is not a PEM" in result.stderr
    assert "Traceback" not in result.stderr
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    result = _cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr


def test_check_missing_file_exits_2(tmp_path: Path) -> None:
    result = _cli("check", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "file not found" in result.stderr


def test_load_config_from_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"routes: [{GOOD_ROUTE}]")
    assert load_config(path).routes[0].name == "ok"
