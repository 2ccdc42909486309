"""RFC 9421 end to end: random requests -> `signing-proxy run` (reverse and forward mode) -> an
upstream that verifies every signature with an independent implementation, the PyPI
`http-message-signatures` library (tests/verifiers/rfc9421.py), for each of the six algorithms.

Also: a tampered request is rejected by that verifier, a route signing with the wrong key is
rejected, a request missing a covered component is a 400, a rotated key file is picked up by
hot reload, and a 200 MiB body with a covered `content-digest` goes through in flat memory.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.support import ProxyProcess, Upstream, running_proxy, running_upstream
from tests.verifiers.rfc9421 import InvalidSignature, ReceivedRequest, verify_rfc9421

MIB = 1024 * 1024
ALGORITHMS = [
    "hmac-sha256",
    "ed25519",
    "ecdsa-p256-sha256",
    "ecdsa-p384-sha384",
    "rsa-pss-sha512",
    "rsa-v1_5-sha256",
]
COMPONENTS = [
    "@method",
    "@target-uri",
    "@authority",
    "@scheme",
    "@request-target",
    "@path",
    "@query",
    '@query-param;name="q"',
    "content-type",
    "x-multi",
    "content-digest",
    'content-digest;key="sha-256"',
]
REQUIRED = ["@method", "@target-uri", "@authority", "@path", "@query", "content-digest"]


@dataclass(frozen=True)
class KeyPair:
    algorithm: str
    private: str  # what the proxy's key file holds (PEM, or the base64 HMAC secret)
    public: bytes  # what the verifier gets (PEM, or the HMAC secret's bytes)
    key_encoding: str = "raw"


def _pem(key: Any, traditional: bool) -> str:
    form = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if traditional
        else serialization.PrivateFormat.PKCS8
    )
    private = key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())
    return str(private.decode())


def _public(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def new_key(algorithm: str) -> KeyPair:
    """A fresh key; the RSA and EC keys alternate PKCS#8 and traditional PEM."""
    if algorithm == "hmac-sha256":
        secret = os.urandom(32)
        return KeyPair(algorithm, base64.b64encode(secret).decode(), secret, "base64")
    key: Any
    if algorithm == "ed25519":
        key, traditional = ed25519.Ed25519PrivateKey.generate(), False
    elif algorithm == "ecdsa-p256-sha256":
        key, traditional = ec.generate_private_key(ec.SECP256R1()), True
    elif algorithm == "ecdsa-p384-sha384":
        key, traditional = ec.generate_private_key(ec.SECP384R1()), False
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        traditional = algorithm == "rsa-v1_5-sha256"
    return KeyPair(algorithm, _pem(key, traditional), _public(key))


@dataclass
class Received:
    request: ReceivedRequest
    body: bytes
    verified: bool
    reason: str


@pytest.fixture(scope="module")
def keys() -> dict[str, KeyPair]:
    return {algorithm: new_key(algorithm) for algorithm in ALGORITHMS}


@pytest.fixture(scope="module")
def upstream(keys: dict[str, KeyPair]) -> Iterator[Upstream]:
    with running_upstream() as server:
        server.received = []  # type: ignore[attr-defined]

        def verifying(algorithm: str) -> Any:
            async def handler(request: web.BaseRequest) -> web.Response:
                body = await request.content.read()
                received = ReceivedRequest(
                    request.method,
                    f"http://{request.host}{request.raw_path}",
                    list(request.headers.items()),
                )
                try:
                    verify_rfc9421(
                        received,
                        algorithm=algorithm,
                        key_id=f"key-{algorithm}",
                        public_key=keys[algorithm].public,
                        body=body,
                        require=REQUIRED,
                    )
                    ok, reason = True, ""
                except InvalidSignature as err:
                    ok, reason = False, str(err)
                server.received.append(Received(received, body, ok, reason))  # type: ignore[attr-defined]
                return web.json_response(
                    {"verified": ok, "reason": reason, "body_len": len(body)},
                    status=200 if ok else 401,
                )

            return handler

        for algorithm in ALGORITHMS:
            server.handlers[f"/verify/{algorithm}/"] = verifying(algorithm)
        yield server


def signer(key: KeyPair, key_file: Path, **extra: Any) -> dict[str, Any]:
    key_file.write_text(key.private + "\n")
    return {
        "scheme": "http-message-signatures",
        "key_id": f"key-{key.algorithm}",
        "algorithm": key.algorithm,
        "key": {"file": str(key_file)},
        "key_encoding": key.key_encoding,
        "components": COMPONENTS,
        "expires": 60,
        "nonce": True,
        "include_alg": True,
        "tag": "e2e",
        **extra,
    }


@pytest.fixture(scope="module")
def proxy(
    upstream: Upstream, keys: dict[str, KeyPair], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    workdir = tmp_path_factory.mktemp("rfc9421")
    routes = []
    for algorithm, key in keys.items():
        block = signer(key, workdir / f"{algorithm}.key")
        common = {"upstream": f"{upstream.url}/verify/{algorithm}", "signer": block}
        routes.append({"name": algorithm, "match": {"path_prefix": f"/{algorithm}"}, **common})
        routes.append({"name": f"{algorithm}-fwd", "match": {"host": _host(algorithm)}, **common})
    other = new_key("ed25519")  # signs as key-ed25519 with a key the verifier does not know
    routes.append(
        {
            "name": "wrong-key",
            "match": {"path_prefix": "/wrong"},
            "upstream": f"{upstream.url}/verify/ed25519",
            "signer": signer(other, workdir / "other.key"),
        }
    )
    with running_proxy({"routes": routes}, workdir) as process:
        yield process


def _host(algorithm: str) -> str:
    return f"{algorithm.replace('_', '-')}.test"


def _segment(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + "-._~ é%?"  # no /: %2F decodes to one
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10)))
    return quote(text if text.strip(".") else f"s{text}", safe="")  # the proxy refuses . and ..


def random_request(rng: random.Random) -> dict[str, Any]:
    """A random method, path, query (always with one `q`), headers and body."""
    method = rng.choice(["GET", "POST", "PUT", "PATCH", "DELETE"])
    path = "/" + "/".join(_segment(rng) for _ in range(rng.randint(1, 4)))
    params = [("q", _segment(rng))] + [
        (rng.choice(["a", "b", "Pet", "x y"]), _segment(rng)) for _ in range(rng.randint(0, 3))
    ]
    rng.shuffle(params)
    query = "&".join(f"{quote(k)}={v}" for k, v in params)
    body = b"" if method in {"GET", "DELETE"} else rng.randbytes(rng.randint(0, 64 * 1024))
    headers = [
        ("Content-Type", rng.choice(["application/json", "text/plain; charset=utf-8"])),
        ("X-Multi", f"  first {rng.randint(0, 9)}  "),
        ("X-Multi", "second, third"),
        ("Signature", "sig1=:c3RhbGU=:"),  # the app's own: replaced
        ("Content-Digest", "sha-256=:c3RhbGU=:"),  # likewise: recomputed over what is sent
    ]
    return {"method": method, "path": path, "query": query, "headers": headers, "body": body}


def send(proxy: ProxyProcess, mode: str, route: str, spec: dict[str, Any]) -> requests.Response:
    """Through the proxy by a raw socket-level client (http.client keeps bytes and repeats)."""
    import http.client

    target = f"{spec['path']}?{spec['query']}"
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        if mode == "reverse":
            conn.putrequest(spec["method"], f"/{route}{target}", skip_accept_encoding=True)
        else:
            conn.putrequest(
                spec["method"], f"http://{_host(route)}{target}", skip_accept_encoding=True
            )
        for name, value in spec["headers"]:
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(spec["body"])))
        conn.endheaders(spec["body"])
        answer = conn.getresponse()
        response = requests.Response()
        response.status_code = answer.status
        response._content = answer.read()
        return response
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_random_requests_verify_independently(
    proxy: ProxyProcess, upstream: Upstream, mode: str, algorithm: str
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    for _ in range(6):
        spec = random_request(rng)
        response = send(proxy, mode, algorithm, spec)
        assert response.status_code == 200, (seed, spec["method"], spec["path"], response.text)
        assert response.json()["verified"] is True
        received = upstream.received[-1]  # type: ignore[attr-defined]
        assert received.body == spec["body"]
        headers = received.request.header_lines
        assert sum(1 for n, _ in headers if n.lower() == "signature") == 1
        assert "c3RhbGU" not in str(headers)  # neither stale Signature nor Content-Digest


def _last_verified(upstream: Upstream, algorithm: str) -> Received:
    for received in reversed(upstream.received):  # type: ignore[attr-defined]
        if received.verified and f"/verify/{algorithm}/" in received.request.url:
            return received  # type: ignore[no-any-return]
    raise AssertionError("no verified request recorded")


def _tampered(received: Received) -> list[tuple[str, ReceivedRequest, bytes]]:
    request, body = received.request, received.body
    lines = request.header_lines
    return [
        ("method", replace(request, method="PATCH" if request.method != "PATCH" else "PUT"), body),
        ("path", replace(request, url=request.url.replace("/verify/", "/verify/x/", 1)), body),
        ("query", replace(request, url=request.url.replace("q=", "q=1", 1)), body),
        ("body", request, body + b"!"),
        (
            "header",
            replace(
                request,
                header_lines=[(n, v + "x" if n.lower() == "x-multi" else v) for n, v in lines],
            ),
            body,
        ),
        (
            "header order",
            replace(request, header_lines=list(reversed(lines))),  # x-multi lines swap
            body,
        ),
    ]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_tampered_request_is_rejected(
    proxy: ProxyProcess, upstream: Upstream, keys: dict[str, KeyPair], algorithm: str
) -> None:
    spec = random_request(random.Random(7))
    spec["method"], spec["body"] = "POST", b'{"amount": 100}'
    assert send(proxy, "reverse", algorithm, spec).status_code == 200
    received = _last_verified(upstream, algorithm)
    verify = {
        "algorithm": algorithm,
        "key_id": f"key-{algorithm}",
        "public_key": keys[algorithm].public,
        "require": REQUIRED,
    }
    verify_rfc9421(received.request, body=received.body, **verify)  # as received: valid
    still_valid = []
    for what, request, body in _tampered(received):
        try:
            verify_rfc9421(request, body=body, **verify)
        except InvalidSignature:
            continue
        still_valid.append(what)
    assert still_valid == [], f"tampered requests still verify: {still_valid}"


def test_wrong_key_is_rejected_by_the_verifier(proxy: ProxyProcess) -> None:
    spec = random_request(random.Random(3))
    response = send(proxy, "reverse", "wrong", spec)
    assert response.status_code == 401
    assert response.json()["verified"] is False


def test_missing_covered_component_is_a_400(proxy: ProxyProcess, upstream: Upstream) -> None:
    before = len(upstream.received)  # type: ignore[attr-defined]
    spec = random_request(random.Random(5))
    spec["headers"] = [h for h in spec["headers"] if h[0] != "Content-Type"]
    response = send(proxy, "reverse", "ed25519", spec)
    assert response.status_code == 400, response.text
    assert "content-type" in response.json()["error"]["message"]
    spec = random_request(random.Random(5))
    spec["query"] = "q=1&q=2"
    response = send(proxy, "forward", "ed25519", spec)
    assert response.status_code == 400, response.text
    assert "2 times" in response.json()["error"]["message"]
    assert len(upstream.received) == before  # type: ignore[attr-defined]  # nothing unsigned


def test_rotated_key_file_is_picked_up(upstream: Upstream, tmp_path: Path) -> None:
    old, new = new_key("ed25519"), new_key("ed25519")
    key_file = tmp_path / "client.pem"
    block = signer(old, key_file, components=["@method", "@path"])
    config = {"routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": upstream.url}]}
    config["routes"][0]["signer"] = block
    with running_proxy(config, tmp_path) as proxy:

        def verifies_with(key: KeyPair) -> bool:
            requests.get(f"{proxy.url}/rotate", timeout=10)
            seen = upstream.seen[-1]
            received = ReceivedRequest(seen.method, f"http://h{seen.raw_path}", seen.header_items)
            try:
                verify_rfc9421(
                    received, algorithm="ed25519", key_id="key-ed25519", public_key=key.public
                )
            except InvalidSignature:
                return False
            return True

        assert verifies_with(old)
        staged = tmp_path / "client.pem.new"
        staged.write_text(new.private)
        staged.replace(key_file)  # an atomic swap, as a Secret volume does
        deadline = time.monotonic() + 5
        while not verifies_with(new) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert verifies_with(new), "the rotated key was not used within 5 s"
        assert not verifies_with(old)
        # A key that does not fit the algorithm is refused at reload; the last good one stays.
        staged.write_text(new_key("rsa-pss-sha512").private)
        staged.replace(key_file)
        deadline = time.monotonic() + 5
        while "config_reload_failed" not in proxy.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        failure = next(x for x in proxy.logs().splitlines() if "config_reload_failed" in x)
        assert "routes[0].signer.key" in failure
        assert "needs an Ed25519 private key" in failure
        assert verifies_with(new)


@pytest.mark.slow
def test_200_mib_body_with_content_digest_in_flat_memory(tmp_path: Path) -> None:
    key = new_key("ed25519")
    total, chunk = 200 * MIB, os.urandom(MIB)
    expected = hashlib.sha256()
    for _ in range(total // MIB):
        expected.update(chunk)
    with running_upstream() as server:

        async def streaming_verify(request: web.BaseRequest) -> web.Response:
            digest, size = hashlib.sha256(), 0
            async for piece in request.content.iter_chunked(MIB):
                digest.update(piece)
                size += len(piece)
            received = ReceivedRequest(
                request.method,
                f"http://{request.host}{request.raw_path}",
                list(request.headers.items()),
            )
            sent = base64.b64encode(digest.digest()).decode()
            try:  # the signature by the library; the digest streamed, against what it covers
                verify_rfc9421(
                    received,
                    algorithm="ed25519",
                    key_id="key-ed25519",
                    public_key=key.public,
                    require=["content-digest"],
                )
                ok = request.headers["Content-Digest"] == f"sha-256=:{sent}:"
            except InvalidSignature:
                ok = False
            return web.json_response({"verified": ok, "size": size}, status=200 if ok else 401)

        server.handlers["/big"] = streaming_verify
        block = signer(key, tmp_path / "k.pem", components=["@method", "@path", "content-digest"])
        route = {
            "name": "big",
            "match": {"path_prefix": "/"},
            "upstream": server.url,
            "signer": block,
            "max_body_bytes": 300 * MIB,
        }
        with running_proxy({"routes": [route]}, tmp_path, env={"TMPDIR": str(tmp_path)}) as proxy:
            body = (chunk for _ in range(total // MIB))
            response = requests.post(f"{proxy.url}/big", data=body, timeout=600)
            assert response.status_code == 200, response.text
            assert response.json() == {"verified": True, "size": total}
            peak = proxy.peak_rss_bytes()
            assert peak <= 100 * MIB, f"peak RSS {peak / MIB:.1f} MiB"
