"""`signing-proxy sign --explain` on hmac routes (a subprocess): each var's value, the message
with non-printable bytes escaped, the key's shape (never its value), each placement; `--at`
fixes every `now` var and `--nonce` every `random` one."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.hmac_cases import HMAC_CONFIGS, api_case, api_vectors

VECTORS = {v["id"]: v for v in api_vectors()}


def _explain(case_id: str, *extra: str, json_out: bool = True) -> tuple[str, dict[str, Any]]:
    case = api_case(VECTORS[case_id])
    args = [sys.executable, "-m", "proxy", "sign", "--config", str(HMAC_CONFIGS / case.config)]
    args += ["--explain", "-X", case.method, *extra, *(["--json"] if json_out else [])]
    for name, value in case.headers.items():
        args += ["-H", f"{name}: {value}"]
    if case.body is not None:
        args += ["--data", case.body.decode()]
    args += ["--at", str(case.at), *(["--nonce", case.nonce] if case.nonce else []), case.url]
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=60, env={**os.environ, **case.env}
    )
    assert result.returncode == 0, result.stderr
    for name, value in case.env.items():
        if "SECRET" in name:
            assert value not in result.stdout
    return result.stdout, json.loads(result.stdout)["explain"] if json_out else {}


def test_binance_steps() -> None:
    _, explain = _explain("binance-ascii")
    expected_query = VECTORS["binance-ascii"]["expect"]["query"]
    signature = expected_query.rsplit("=", 1)[1]
    assert explain["vars"] == {"ts": "1499827319559"}
    assert explain["message"] == expected_query.rsplit("&signature=", 1)[0]
    assert explain["key"] == "64 bytes, from {secret}"
    assert explain["algorithm"] == "hmac-sha256"
    assert explain["signature"] == signature
    assert explain["placements"] == {
        "before_sign.query.recvWindow": "5000",
        "before_sign.query.timestamp": "1499827319559",
        "after_sign.query.signature": signature,
        "after_sign.headers.X-MBX-APIKEY": VECTORS["binance-ascii"]["credentials"]["key_id"],
    }


def test_at_and_nonce_fix_every_now_and_random_var() -> None:
    _, explain = _explain("alibaba-rpc-describeregions")
    assert explain["vars"] == {
        "ts": "2016-02-23T12:46:24Z",
        "nonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
    }
    assert explain["key"] == "11 bytes, from {secret}&"  # "testsecret&"
    assert explain["placements"]["after_sign.query.Signature"] == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="


def test_raw_bytes_in_the_message_are_escaped() -> None:
    text, _ = _explain("kraken-addorder", json_out=False)
    _, explain = _explain("kraken-addorder")
    vector = VECTORS["kraken-addorder"]
    assert explain["key"] == "64 bytes, from {secret|b64decode}"
    assert explain["message"].startswith("/0/private/AddOrder")
    assert explain["message_bytes"] == len("/0/private/AddOrder") + 32
    assert "\\x" in explain["message"]
    assert all(ch.isprintable() for ch in explain["message"])
    assert (
        explain["placements"]["after_sign.headers.API-Sign"]
        == vector["expect"]["headers"]["API-Sign"]
    )
    assert "== explain ==" in text
    assert "key: 64 bytes, from {secret|b64decode}" in text
    body_text = text.split("== explain ==", 1)[1]
    assert all(ch.isprintable() for line in body_text.splitlines() for ch in line)


def test_explain_on_another_scheme_says_so(tmp_path: Path) -> None:
    config = {"routes": [{"name": "b", "match": {"host": "h.example"},
                          "signer": {"scheme": "bearer", "token": "tok-value-123"}}]}  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "sign", "--config", str(path), "--explain", "--json",
         "https://h.example/x"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "no step-by-step explanation" in json.loads(result.stdout)["explain"]["note"]
    assert "tok-value-123" not in result.stdout


def test_a_derived_key_shows_its_length_only(tmp_path: Path) -> None:
    secret = base64.b64encode(b"k" * 16).decode()
    config = {"routes": [{"name": "h", "match": {"host": "h.example"}, "signer": {
        "scheme": "hmac", "secret": secret,
        "sign": {"algorithm": "hmac-sha256", "key": "{secret|b64decode}", "message": "{method}"},
        "after_sign": {"headers": {"X-Sig": "{signature}"}},
    }}]}  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "sign", "--config", str(path), "--explain",
         "https://h.example/x"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout
    assert "key: 16 bytes, from {secret|b64decode}" in result.stdout
