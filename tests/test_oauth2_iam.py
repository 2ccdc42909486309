"""`oauth2-client-credentials` against a real third-party authorization server: Canaille, run
in-process by pytest-iam. Each client authentication method gets a token from it, and the
upstream sees that token, which Canaille confirms it issued to that client.

Canaille's client credentials grant accepts only client_secret_basic out of the box (authlib's
default); the test-side setting below allows client_secret_post and JWT client assertions
(RFC 7523, which Canaille implements for its other grants) for this grant too.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from authlib.oauth2.rfc6749 import ClientCredentialsGrant
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pytest_iam import Server

from tests.support import Upstream, running_proxy, running_upstream

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def _all_client_auth_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        ClientCredentialsGrant,
        "TOKEN_ENDPOINT_AUTH_METHODS",
        ["client_secret_basic", "client_secret_post", "client_assertion_jwt"],
    )


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with running_upstream() as server:
        yield server


def _client(iam_server: Server, method: str, **fields: Any) -> Any:
    client = iam_server.models.Client(
        client_id=f"proxy-{uuid.uuid4().hex[:8]}",
        client_name="signing-proxy",
        client_id_issued_at=dt.datetime.now(dt.UTC),
        grant_types=["client_credentials"],
        response_types=["token"],
        token_endpoint_auth_method=method,
        scope=["openid", "profile"],
        **fields,
    )
    iam_server.backend.save(client)
    return client


def _route(upstream: Upstream, iam_server: Server, **signer: Any) -> dict[str, Any]:
    return {
        "routes": [
            {
                "name": "iam",
                "match": {"path_prefix": "/iam"},
                "upstream": upstream.url,
                "signer": {
                    "scheme": "oauth2-client-credentials",
                    "token_url": f"{iam_server.url}oauth/token",
                    "scope": "profile",
                    **signer,
                },
            }
        ]
    }


def _token_seen_by_upstream(
    config: dict[str, Any], upstream: Upstream, tmp_path: Path, env: dict[str, str]
) -> str:
    with running_proxy(config, tmp_path, env=env) as proxy:
        ready = requests.get(f"{proxy.admin_url}/readyz", timeout=5)
        for _ in range(200):
            if ready.status_code == 200:
                break
            time.sleep(0.05)
            ready = requests.get(f"{proxy.admin_url}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        answer = requests.get(f"{proxy.url}/iam/resource", timeout=10)
        assert answer.status_code == 200
        proxy.stop()
        logs = proxy.logs()
    authorization = upstream.seen[-1].headers["Authorization"]
    assert authorization.startswith("Bearer ")
    token = authorization.removeprefix("Bearer ")
    assert token not in logs
    for secret in env.values():
        assert secret not in logs
    return token


def _issued_to(iam_server: Server, token: str) -> Any:
    issued = iam_server.backend.query(iam_server.models.Token, access_token=token)
    assert len(issued) == 1, "the upstream's token was not issued by the authorization server"
    assert issued[0].scope == ["profile"]
    return issued[0].client


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_client_secret_methods(
    iam_server: Server, upstream: Upstream, tmp_path: Path, method: str
) -> None:
    secret = f"iam-secret-{uuid.uuid4().hex}"
    client = _client(iam_server, method, client_secret=secret)
    config = _route(
        upstream,
        iam_server,
        client_id=client.client_id,
        client_secret={"env": "IAM_SECRET"},
        auth_method=method,
    )
    token = _token_seen_by_upstream(config, upstream, tmp_path, {"IAM_SECRET": secret})
    assert _issued_to(iam_server, token).client_id == client.client_id


def _rsa_key() -> tuple[Any, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, "RS256"


def _ec_key() -> tuple[Any, str]:
    return ec.generate_private_key(ec.SECP256R1()), "ES256"


@pytest.mark.parametrize("make_key", [_rsa_key, _ec_key], ids=["RS256", "ES256"])
def test_private_key_jwt(
    iam_server: Server, upstream: Upstream, tmp_path: Path, make_key: Any
) -> None:
    key, algorithm = make_key()
    kid = f"key-{uuid.uuid4().hex[:6]}"
    public = json.loads(jwt.get_algorithm_by_name(algorithm).to_jwk(key.public_key()))
    jwks = {"keys": [{**public, "kid": kid, "alg": algorithm, "use": "sig"}]}
    client = _client(
        iam_server,
        "private_key_jwt",
        jwks=json.dumps(jwks),
        token_endpoint_auth_signing_alg=algorithm,
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "client.pem").write_bytes(pem)
    config = _route(
        upstream,
        iam_server,
        client_id=client.client_id,
        auth_method="private_key_jwt",
        private_key={"file": str(tmp_path / "client.pem")},
        key_id=kid,
    )
    token = _token_seen_by_upstream(config, upstream, tmp_path, {})
    assert _issued_to(iam_server, token).client_id == client.client_id
    assert pem.decode().splitlines()[1] not in (tmp_path / "proxy.log").read_text()


def test_a_wrong_secret_is_refused_by_the_server(
    iam_server: Server, upstream: Upstream, tmp_path: Path
) -> None:
    client = _client(iam_server, "client_secret_basic", client_secret="the-right-one")
    config = _route(
        upstream,
        iam_server,
        client_id=client.client_id,
        client_secret={"env": "IAM_SECRET"},
    )
    with running_proxy(config, tmp_path, env={"IAM_SECRET": "a-wrong-one-Zz"}) as proxy:
        for _ in range(100):
            ready = requests.get(f"{proxy.admin_url}/readyz", timeout=5)
            if "routes" in ready.json() and "could not" in ready.json()["routes"]["iam"]:
                break
            time.sleep(0.05)
        assert ready.status_code == 503
        assert ready.json()["routes"]["iam"] == (
            "the first access token could not be fetched: "
            "the token endpoint answered 401 (invalid_client)"
        )
        assert requests.get(f"{proxy.url}/iam/x", timeout=10).status_code == 503
    assert upstream.seen == []
