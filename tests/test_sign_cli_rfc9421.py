"""RFC 9421 Appendix B through `signing-proxy sign --json` in a subprocess: config loading (the
key from a file, the key id from an env var), route matching, header preparation, `--at` and
`--nonce`, and the JSON output, against the RFC's signature bases and signatures."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.signers.test_http_message_signatures import (
    REQUEST_EXAMPLES,
    _components_of,
    _signature_bytes,
    example_request,
    secret_of,
    verify,
)

CREATED_ISO = "2021-04-20T02:07:53Z"  # created=1618884473


def _sign_cli(example: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    request = example_request(example)
    key_file = tmp_path / "key"
    key_file.write_text(secret_of(example["key"]) + "\n")
    params = example["signature_params"]
    signer = {
        "scheme": "http-message-signatures",
        "key_id": {"env": "RFC9421_KEY_ID"},
        "algorithm": example["alg"],
        "key": {"file": str(key_file)},
        "key_encoding": "base64" if example["alg"] == "hmac-sha256" else "raw",
        "label": example["label"],
        "components": _components_of(params),
        "nonce": ";nonce=" in params,
        "content_digest": "none",
    }
    if ";tag=" in params:
        signer["tag"] = "header-example"
    config = {"routes": [{"name": "rfc", "match": {"host": request.host}, "signer": signer}]}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    args = [sys.executable, "-m", "proxy", "sign", "--config", str(config_path), "--json"]
    args += ["-X", request.method, "--at", CREATED_ISO, "--nonce", "b3k2pp5k7z-50gnwp.yemd"]
    for name, value in request.headers.items():
        if name.lower() not in {"host", "content-length"}:  # the proxy sets both
            args += ["-H", f"{name}: {value}"]
    if request.body:
        body_path = tmp_path / "body"
        body_path.write_bytes(request.body)
        args += ["--data-binary", f"@{body_path}"]
    args.append(request.url)
    env = {**os.environ, "RFC9421_KEY_ID": example["key"]}
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert "PRIVATE KEY" not in result.stdout
    output: dict[str, Any] = json.loads(result.stdout)
    return output


@pytest.mark.parametrize("example", REQUEST_EXAMPLES, ids=[e["section"] for e in REQUEST_EXAMPLES])
def test_rfc_example_via_cli(example: dict[str, Any], tmp_path: Path) -> None:
    out = _sign_cli(example, tmp_path)
    assert out["string_to_sign"] == example["signature_base"]
    headers = out["headers"]
    assert headers["Signature-Input"] == f"{example['label']}={example['signature_params']}"
    assert example["key"] in headers["Signature-Input"]  # key_id is public: shown
    ours = _signature_bytes(headers["Signature"], example["label"])
    verify(example["alg"], example["key"], out["string_to_sign"].encode(), ours)
    if example["deterministic"]:
        assert ours == base64.b64decode(example["signature_b64"])
        assert headers["Signature"] == f"{example['label']}=:{example['signature_b64']}:"


def test_missing_component_via_cli(tmp_path: Path) -> None:
    example = next(e for e in REQUEST_EXAMPLES if e["section"] == "B.2.5")
    key_file = tmp_path / "key"
    key_file.write_text(secret_of(example["key"]))
    signer = {
        "scheme": "http-message-signatures",
        "key_id": "k",
        "algorithm": "hmac-sha256",
        "key": {"file": str(key_file)},
        "key_encoding": "base64",
        "components": ["@method", "date"],
    }
    config = {"routes": [{"name": "rfc", "match": {"host": "example.com"}, "signer": signer}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "sign", "--config", str(tmp_path / "c.yaml"),
         "https://example.com/x"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "no date header" in result.stderr
    assert secret_of(example["key"]) not in result.stderr
