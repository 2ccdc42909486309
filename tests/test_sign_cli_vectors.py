"""Every vendor vector again, through `signing-proxy sign --json` in a subprocess.

The signer tests (tests/signers/) check each vector against the signer directly; here the same
vectors go through the CLI: config loading (credentials from env vars), route matching, header
preparation, `--at`/`--nonce` parsing and the JSON output. Secret credentials are redacted in
that output, so where a vector's expected output contains one, the redaction is what is checked.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import load_vectors
from tests.signers.test_jscrambler import vector_request
from tests.verifiers.jscrambler import parse_form_body, parse_querystring


def _cases(scheme: str) -> list[Any]:
    return [pytest.param(v, id=f"{scheme}:{v['name']}") for v in load_vectors(scheme)]


def _signer(scheme: str, vector: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The route's signer config (credentials by {env:}) and the env holding them."""
    creds = vector["credentials"]
    if scheme == "devo":
        if creds.get("mode") == "standalone-token":
            scheme, fields = "devo-token", {"token": creds["token"]}
        else:
            fields = {"api_key": creds["api_key"], "api_secret": creds["api_secret"]}
            fields["key_header"] = creds["mode"]
    elif scheme == "devengo" and "jwt" in creds:
        scheme, fields = "bearer", {"token": creds["jwt"]}
    else:
        fields = dict(creds)
    env: dict[str, str] = {}
    signer: dict[str, Any] = {"scheme": scheme}
    for name, value in fields.items():
        if name == "key_header":
            signer[name] = value
        else:
            var = f"VECTOR_{name.upper()}"
            env[var] = value
            signer[name] = {"env": var}
    return signer, env


def _at(vector: dict[str, Any]) -> str | None:
    time = vector.get("time") or {}
    if "ms" in time:
        return str(time["ms"])
    if "timestamp_ms" in time:
        return str(time["timestamp_ms"])
    if "timestamp_s" in time:
        return str(int(time["timestamp_s"]) * 1000)
    if "timestamp" in time:
        return str(time["timestamp"])  # ISO 8601
    return None


def _sign(scheme: str, vector: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    url = vector["url"]
    host = urlsplit(url).hostname
    signer, env = _signer(scheme, vector)
    config = {"routes": [{"name": "vector", "match": {"host": host}, "signer": signer}]}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    args = [sys.executable, "-m", "proxy", "sign", "--config", str(config_path), "--json"]
    args += ["-X", vector["method"]]
    headers = dict(vector.get("headers_in") or {})
    body: bytes | None = None
    if scheme == "jscrambler":
        request = asyncio.run(vector_request(vector))
        body = request.body
        headers = dict(request.headers)
    elif vector.get("body_b64") is not None and not vector.get("body_absent"):
        body = base64.b64decode(vector["body_b64"])
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    if body is not None:
        body_path = tmp_path / "body.bin"
        body_path.write_bytes(body)
        args += ["--data-binary", f"@{body_path}"]
    if (at := _at(vector)) is not None:
        args += ["--at", at]
    if vector.get("nonce"):
        args += ["--nonce", vector["nonce"]]
    args.append(url)
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )
    assert result.returncode == 0, result.stderr
    output: dict[str, Any] = json.loads(result.stdout)
    for value in env.values():
        if value not in _public_values(scheme, vector):
            assert value not in result.stdout, "a secret credential was printed"
    return output


def _public_values(scheme: str, vector: dict[str, Any]) -> set[str]:
    public = {"token", "api_key", "access_key", "api_key_id"}
    if scheme == "devo" and vector["credentials"].get("mode") == "standalone-token":
        public = set()
    if scheme == "devengo" and "jwt" in vector["credentials"]:
        public = set()
    return {v for k, v in vector["credentials"].items() if k in public}


def _redacted(expected: str, vector: dict[str, Any], scheme: str) -> str:
    public = _public_values(scheme, vector)
    for name, value in vector["credentials"].items():
        if name not in {"mode"} and value not in public and isinstance(value, str):
            field = {"jwt": "token"}.get(name, name)
            expected = expected.replace(value, f"<redacted {field}>")
    return expected


def _headers_match(
    out: dict[str, str], expected: dict[str, str], vector: dict[str, Any], scheme: str
) -> None:
    lowered = {k.lower(): v for k, v in out.items()}
    for name, value in expected.items():
        assert lowered.get(name.lower()) == _redacted(value, vector, scheme), name


@pytest.mark.parametrize("vector", _cases("devresults"))
def test_devresults_vector_via_cli(vector: dict[str, Any], tmp_path: Path) -> None:
    out = _sign("devresults", vector, tmp_path)
    expected = vector["expected"]
    if expected is None:  # docs/schemes.md#devresults: forward unchanged, sign as `flag=`
        assert out["url"].startswith(vector["url"].split("?")[0])
        return
    assert out["string_to_sign"] == expected["string_to_sign"]
    assert out["url"] == expected["signed_url"].replace("http://", "https://", 1)


@pytest.mark.smoke
@pytest.mark.parametrize("vector", _cases("devo"))
def test_devo_vector_via_cli(vector: dict[str, Any], tmp_path: Path) -> None:
    out = _sign("devo", vector, tmp_path)
    expected = vector["expected"]
    if "string_to_sign" in expected:
        assert out["string_to_sign"] == expected["string_to_sign"]
    _headers_match(out["headers"], expected["headers_out"], vector, "devo")
    if vector.get("body_b64") and not vector.get("body_absent"):
        assert base64.b64decode(out["body_b64"]) == base64.b64decode(vector["body_b64"])


@pytest.mark.parametrize("vector", _cases("jscrambler"))
def test_jscrambler_vector_via_cli(vector: dict[str, Any], tmp_path: Path) -> None:
    out = _sign("jscrambler", vector, tmp_path)
    expected = vector["expected"]
    assert out["string_to_sign"] == expected["string_to_sign"]
    if vector["method"] in {"GET", "DELETE"}:
        assert out["url"] == expected["signed_url"]
        params = parse_querystring(urlsplit(out["url"]).query)
    else:
        body = base64.b64decode(out["body_b64"])
        params, _ = parse_form_body(body, out["headers"]["Content-Type"])
    assert params == expected["params_out"]


@pytest.mark.parametrize("vector", _cases("devengo"))
def test_devengo_vector_via_cli(vector: dict[str, Any], tmp_path: Path) -> None:
    out = _sign("devengo", vector, tmp_path)
    expected = vector["expected"]
    if "string_to_sign" in expected:
        assert out["string_to_sign"] == expected["string_to_sign"]
    _headers_match(out["headers"], expected["headers_out"], vector, "devengo")


def test_a_request_the_scheme_refuses_is_a_clear_error(tmp_path: Path) -> None:
    signer = {"scheme": "jscrambler", "access_key": "AK", "secret_key": "SK"}
    config = {"routes": [{"name": "j", "match": {"host": "api.jscrambler.com"}, "signer": signer}]}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "sign", "--config", str(config_path),
         "-H", "Content-Type: application/json", "--data", '{"a": 1}',
         "https://api.jscrambler.com/v3/code.json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "the request cannot be signed" in result.stderr
    assert "form-urlencoded or multipart" in result.stderr
    assert "Traceback" not in result.stderr
