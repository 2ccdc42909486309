"""draft-cavage HTTP Signatures: OCI's documented GET and POST examples (exact signatures,
through the signer and through `signing-proxy sign --json`), the ActivityPub profile, HMAC, and
the refusals."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from proxy.signers import SIGNERS
from proxy.signers.base import SigningContext
from proxy.signers.cavage import CavageConfig, CavageSigner
from proxy.signers.rfc9421 import MissingComponent
from tests.conftest import VECTORS
from tests.signers.helpers import request_for

OCI = json.loads((VECTORS / "oci-signatures.json").read_text(encoding="utf-8"))
OCI_VECTORS: list[dict[str, Any]] = OCI["vectors"]


def _epoch(date: str) -> int:
    return int(parsedate_to_datetime(date).timestamp())


def make_signer(**overrides: Any) -> CavageSigner:
    config = {
        "scheme": "http-signatures-cavage",
        "key_id": OCI["key_id"],
        "key": OCI["private_key_pem"],
        **overrides,
    }
    return CavageSigner(CavageConfig.model_validate(config))


def oci_request(vector: dict[str, Any]) -> Any:
    body = vector["body"].encode()
    # OCI's example dates Jan 5, 2014 a Thursday (it was a Sunday): only the app's own Date
    # header, kept because it names the signing time, reproduces those bytes.
    headers = [("Host", vector["url"].split("/")[2]), ("Date", vector["date"])]
    if vector["method"] == "POST":
        headers += [("Content-Type", vector["content_type"]), ("Content-Length", str(len(body)))]
    return request_for(vector["url"], vector["method"], headers, body or None)


def test_registered() -> None:
    assert SIGNERS["http-signatures-cavage"] is CavageSigner


@pytest.mark.parametrize("vector", OCI_VECTORS, ids=[v["id"] for v in OCI_VECTORS])
def test_oci_documented_example(vector: dict[str, Any]) -> None:
    signer = make_signer()
    request = oci_request(vector)
    assert signer.needs_body(vector["method"]) == (vector["method"] == "POST")
    ctx = SigningContext(now_ms=_epoch(vector["date"]) * 1000)
    result = signer.sign(request, ctx)
    assert result.string_to_sign == vector["signing_string"]
    headers = result.request.headers
    assert headers["Date"] == vector["date"]
    assert headers["Authorization"] == (
        f'Signature version="1",keyId="{OCI["key_id"]}",algorithm="rsa-sha256",'
        f'headers="{" ".join(vector["headers_signed"])}",signature="{vector["signature"]}"'
    )
    if "x_content_sha256" in vector:
        assert headers["x-content-sha256"] == vector["x_content_sha256"]


def test_oci_post_hash_from_an_incremental_digest() -> None:
    vector = OCI_VECTORS[1]
    signer = make_signer()
    running = signer.new_body_digest()
    running.update(vector["body"].encode())
    request = oci_request(vector).replace(body=None, body_digest=running)
    result = signer.sign(request, SigningContext(now_ms=_epoch(vector["date"]) * 1000))
    assert result.request.headers["x-content-sha256"] == vector["x_content_sha256"]


@pytest.mark.parametrize("vector", OCI_VECTORS, ids=[v["id"] for v in OCI_VECTORS])
def test_oci_documented_example_via_cli(vector: dict[str, Any], tmp_path: Path) -> None:
    key_file = tmp_path / "oci_api_key.pem"
    key_file.write_text(OCI["private_key_pem"] + "\n")
    signer = {"scheme": "http-signatures-cavage", "profile": "oci", "key_id": OCI["key_id"]}
    signer["key"] = {"file": str(key_file)}
    host = vector["url"].split("/")[2]
    config = {"routes": [{"name": "oci", "match": {"host": host}, "signer": signer}]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    args = [sys.executable, "-m", "proxy", "sign", "--config", str(tmp_path / "config.yaml")]
    args += ["--json", "-X", vector["method"], "--at", str(_epoch(vector["date"]) * 1000)]
    if vector["method"] == "POST":
        (tmp_path / "body.json").write_text(vector["body"])
        args += ["-H", f"Content-Type: {vector['content_type']}"]
        args += ["--data-binary", f"@{tmp_path / 'body.json'}"]
    args += ["-H", f"Date: {vector['date']}", vector["url"]]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["string_to_sign"] == vector["signing_string"]
    assert f'signature="{vector["signature"]}"' in out["headers"]["Authorization"]
    assert "PRIVATE KEY" not in result.stdout


def _rsa_pem(bits: int = 2048) -> tuple[str, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return pem, key


def test_activitypub_profile_signature_header_and_digest() -> None:
    pem, key = _rsa_pem()
    signer = make_signer(
        profile="activitypub", key_id="https://example.social/users/app#main-key", key=pem
    )
    body = b'{"type": "Create"}'
    request = request_for(
        "https://remote.example/inbox",
        "POST",
        [("Host", "remote.example"), ("Authorization", "Bearer stale"), ("Digest", "SHA-256=x")],
        body,
    )
    result = signer.sign(request, SigningContext(now_ms=1_700_000_000_000))
    headers = result.request.headers
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert headers.getall("Digest") == [f"SHA-256={digest}"]
    assert result.string_to_sign == (
        "(request-target): post /inbox\nhost: remote.example\n"
        f"date: Tue, 14 Nov 2023 22:13:20 GMT\ndigest: SHA-256={digest}"
    )
    value = headers["Signature"]
    assert value.startswith('keyId="https://example.social/users/app#main-key",algorithm=')
    assert 'headers="(request-target) host date digest"' in value
    signature = base64.b64decode(value.rsplit('signature="', 1)[1].rstrip('"'))
    key.public_key().verify(
        signature, result.string_to_sign.encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    assert headers["Authorization"] == "Bearer stale"  # not ours to touch in this profile


def test_stale_or_missing_date_is_replaced_by_the_signing_time() -> None:
    signer = make_signer()
    now = SigningContext(now_ms=1_700_000_000_000)
    for sent in ["Tue, 14 Nov 2023 21:13:20 GMT", "yesterday", None]:
        headers = [("Host", "h.example")] + ([("Date", sent)] if sent else [])
        result = signer.sign(request_for("https://h.example/", "GET", headers), now)
        assert result.request.headers.getall("Date") == ["Tue, 14 Nov 2023 22:13:20 GMT"]
    kept = "Tue, 14 Nov 2023 22:13:22 GMT"  # 2 s off: the app's own bytes stay
    request = request_for("https://h.example/", "GET", [("Host", "h.example"), ("Date", kept)])
    assert signer.sign(request, now).request.headers["Date"] == kept


def test_hmac_sha256() -> None:
    signer = make_signer(
        algorithm="hmac-sha256", key="c2hhcmVkLXNlY3JldA==", key_encoding="base64", key_id="k1"
    )
    request = request_for("https://api.example/a?b=1", "GET", [("Host", "api.example")])
    result = signer.sign(request, SigningContext(now_ms=1_700_000_000_000))
    mac = hmac.new(b"shared-secret", result.string_to_sign.encode(), hashlib.sha256).digest()
    assert result.request.headers["Authorization"].endswith(
        f'signature="{base64.b64encode(mac).decode()}"'
    )
    assert "(request-target): get /a?b=1" in result.string_to_sign


def test_missing_header_is_refused() -> None:
    vector = OCI_VECTORS[1]
    request = oci_request(vector)
    request = request.with_headers(remove=["Content-Type"])
    with pytest.raises(MissingComponent, match="content-type"):
        make_signer().sign(request, SigningContext(now_ms=0))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"key": "not a key"}, "not a PEM private key"),
        ({"key_id": 'a"b'}, "without quotes"),
        ({"headers": ["date", "Date"]}, "listed twice"),
        ({"headers": ["transfer-encoding"]}, "cannot be signed"),
        ({"headers": ["bad name"]}, "not a header name"),
        ({"headers": []}, "at least one header"),
        ({"key_encoding": "base64"}, "hmac-sha256 only"),
    ],
)
def test_config_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_signer(**overrides)


def test_repr_shows_no_key() -> None:
    signer = make_signer(algorithm="hmac-sha256", key="cavage-hmac-Zz01", key_id="k")
    assert "cavage-hmac-Zz01" not in repr(signer)
