"""draft-cavage end to end: requests -> `signing-proxy run` (reverse and forward mode) -> an
upstream verifying with an independent implementation, the PyPI `httpsig` library (draft-cavage
HeaderVerifier), plus the body hash (`x-content-sha256` / `Digest`) over the bytes received."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from httpsig.verify import HeaderVerifier

from tests.support import ProxyProcess, Upstream, running_proxy, running_upstream

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PRIVATE_PEM = RSA_KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.TraditionalOpenSSL,
    serialization.NoEncryption(),
).decode()
PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
HMAC_SECRET = "cavage-e2e-secret-5e5e"
ROUTES: dict[str, dict[str, Any]] = {
    "oci": {"profile": "oci", "key_id": "tenancy/user/fp"},
    "oci-hmac": {"profile": "oci", "key_id": "h1", "algorithm": "hmac-sha256"},
    "activitypub": {"profile": "activitypub", "key_id": "https://a.example/u#main-key"},
}


def _body_hash_ok(headers: Any, body: bytes) -> bool:
    sha = base64.b64encode(hashlib.sha256(body).digest()).decode()
    if "x-content-sha256" in headers:
        return bool(headers["x-content-sha256"] == sha)
    if "Digest" in headers:
        return bool(headers["Digest"] == f"SHA-256={sha}")
    return True


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstream() as server:

        def verifying(name: str) -> Any:
            async def handler(request: web.BaseRequest) -> web.Response:
                body = await request.content.read()
                headers = {k: ", ".join(request.headers.getall(k)) for k in request.headers}
                hmac_route = ROUTES[name].get("algorithm") == "hmac-sha256"
                verifier = HeaderVerifier(
                    headers=headers,
                    secret=HMAC_SECRET.encode() if hmac_route else PUBLIC_PEM,
                    required_headers=["(request-target)", "host", "date"],
                    method=request.method,
                    path=request.raw_path,
                    sign_header="signature" if name == "activitypub" else "authorization",
                )
                ok = verifier.verify() and _body_hash_ok(request.headers, body)
                signed = verifier.auth_dict["headers"]
                return web.json_response(
                    {"verified": bool(ok), "signed": signed}, status=200 if ok else 401
                )

            return handler

        for name in [*ROUTES, "wrong"]:
            server.handlers[f"/verify/{name}/"] = verifying(name if name in ROUTES else "oci")
        yield server


@pytest.fixture(scope="module")
def proxy(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    workdir = tmp_path_factory.mktemp("cavage")
    key_file = workdir / "key.pem"
    key_file.write_text(PRIVATE_PEM)
    routes = []
    for name, fields in ROUTES.items():
        key: Any = HMAC_SECRET if fields.get("algorithm") else {"file": str(key_file)}
        signer = {"scheme": "http-signatures-cavage", "key": key, **fields}
        common = {"upstream": f"{upstream.url}/verify/{name}", "signer": signer}
        routes.append({"name": name, "match": {"path_prefix": f"/{name}"}, **common})
        routes.append({"name": f"{name}-fwd", "match": {"host": f"{name}.test"}, **common})
    wrong = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    wrong_pem = wrong.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    routes.append(
        {
            "name": "wrong",
            "match": {"path_prefix": "/wrong"},
            "upstream": f"{upstream.url}/verify/wrong",
            "signer": {"scheme": "http-signatures-cavage", "key_id": "x", "key": wrong_pem},
        }
    )
    with running_proxy({"routes": routes}, workdir) as process:
        yield process


def _send(
    proxy: ProxyProcess, mode: str, route: str, method: str, target: str, body: bytes
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        url = f"/{route}{target}" if mode == "reverse" else f"http://{route}.test{target}"
        conn.putrequest(method, url, skip_accept_encoding=True)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Date", "Mon, 01 Jan 2001 00:00:00 GMT")  # stale: replaced
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("route", list(ROUTES))
def test_requests_verify_with_httpsig(proxy: ProxyProcess, route: str, mode: str) -> None:
    rng = random.Random()
    for method in ["GET", "POST", "PUT", "DELETE"]:
        body = rng.randbytes(rng.randint(0, 4096)) if method in {"POST", "PUT"} else b""
        target = f"/v1/things/{rng.randint(0, 99)}?a=1&b=%20x&c={rng.randint(0, 9)}"
        status, answer = _send(proxy, mode, route, method, target, body)
        assert (status, answer["verified"]) == (200, True), (method, answer)
        if method in {"POST", "PUT"}:
            expected = {"oci": "x-content-sha256", "activitypub": "digest"}[route.partition("-")[0]]
            assert expected in answer["signed"].split(" ")


def test_wrong_key_is_rejected_by_httpsig(proxy: ProxyProcess) -> None:
    status, answer = _send(proxy, "reverse", "wrong", "GET", "/x", b"")
    assert (status, answer["verified"]) == (401, False)


def test_missing_signed_header_is_refused(proxy: ProxyProcess, tmp_path: Path) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        conn.putrequest("POST", "/oci/x", skip_accept_encoding=True)  # no Content-Type
        conn.putheader("Content-Length", "2")
        conn.endheaders(b"{}")
        answer = conn.getresponse()
        body = json.loads(answer.read())
    finally:
        conn.close()
    assert answer.status == 400, body
    assert "content-type" in body["error"]["message"]
