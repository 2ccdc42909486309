"""The precise rules of `oauth2-client-credentials`, one by one: token answers, lifetimes and
refresh points, expiry, backoff, single flight, the token request's client authentication,
and the config checks. The end-to-end behaviour is in tests/test_oauth2*.py."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jwt
import orjson
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import ConfigError, parse_config
from proxy.signers import CredentialsUnavailable, SigningContext, UpstreamRequest
from proxy.signers import oauth2_tokens as tokens_module
from proxy.signers.oauth2 import OAuth2Config, OAuth2Signer
from proxy.signers.oauth2_client import TokenClient, parse_token_answer
from proxy.signers.oauth2_tokens import AccessToken, TokenError, TokenGrant, TokenSource
from proxy.upstream_tls import TlsConfig
from tests.signers.helpers import request_for
from tests.support import running_upstream


def _answer(status: int = 200, **fields: Any) -> TokenGrant:
    return parse_token_answer(status, orjson.dumps(fields), 100.0, 1_000_000.0)


def test_a_good_answer_and_its_lifetime() -> None:
    grant = _answer(access_token="abc.def", token_type="bEaReR", expires_in=3600)
    assert (grant.value, grant.lifetime, grant.requested_at) == ("abc.def", 3600.0, 100.0)
    assert _answer(access_token="t", token_type="Bearer").lifetime == 300.0  # no expires_in
    assert _answer(access_token="t", token_type="Bearer", expires_in="60").lifetime == 60.0


@pytest.mark.parametrize(
    ("status", "fields", "message"),
    [
        (200, {"token_type": "Bearer"}, "has no access_token"),
        (200, {"access_token": "t"}, "has no token_type"),
        (200, {"access_token": "t", "token_type": "MAC"}, "token_type 'MAC' is not Bearer"),
        (200, {"access_token": "t", "token_type": "x y\n"}, "token_type '(not shown)'"),
        (200, {"access_token": "a b", "token_type": "Bearer"}, "an HTTP header cannot carry"),
        (200, {"access_token": "t", "token_type": "Bearer", "expires_in": 0}, "positive"),
        (200, {"access_token": "t", "token_type": "Bearer", "expires_in": "soon"}, "number"),
        (400, {"error": "invalid_scope"}, "answered 400 (invalid_scope)"),
        (400, {"error": "my-secret-echo"}, "answered 400"),
    ],
)
def test_bad_answers_are_errors(status: int, fields: dict[str, Any], message: str) -> None:
    with pytest.raises(TokenError) as err:
        _answer(status, **fields)
    assert message in str(err.value)
    assert "my-secret-echo" not in str(err.value)


def test_not_json_is_an_error() -> None:
    with pytest.raises(TokenError, match="not a JSON object"):
        parse_token_answer(200, b"<html>", 0.0, 0.0)


@pytest.mark.parametrize(
    ("lifetime", "refresh_after"),
    [(3600.0, 3300.0), (600.0, 300.0), (400.0, 200.0), (1.0, 0.5)],
)
def test_refresh_when_min_300_or_half_the_lifetime_remains(
    lifetime: float, refresh_after: float
) -> None:
    token = AccessToken.from_grant(TokenGrant("t", lifetime, 50.0, 1000.0))
    assert token.expires_at == 50.0 + lifetime  # counted from when the request was sent
    assert token.expires_at_wall == 1000.0 + lifetime
    assert token.refresh_at == 50.0 + refresh_after
    assert "t" not in repr(token).replace("AccessToken", "").replace("expires_at_wall", "")


async def test_an_expired_token_is_never_handed_out() -> None:
    now = [0.0]

    async def fetch() -> TokenGrant:
        return TokenGrant("tok", 10.0, now[0], 0.0)

    source = TokenSource(fetch, clock=lambda: now[0])
    with pytest.raises(CredentialsUnavailable, match="being fetched"):
        source.current()
    assert await source.fetch_once()
    assert source.current() == "tok"
    now[0] = 9.999
    assert source.current() == "tok"
    now[0] = 10.0
    with pytest.raises(CredentialsUnavailable, match="expired"):
        source.current()
    assert source.obtained_once()  # readiness stays: requests get 503 until a new token


async def test_concurrent_waiters_share_one_fetch() -> None:
    calls = 0
    release = asyncio.Event()

    async def fetch() -> TokenGrant:
        nonlocal calls
        calls += 1
        await release.wait()
        return TokenGrant("tok", 60.0, asyncio.get_running_loop().time(), 0.0)

    source = TokenSource(fetch, clock=asyncio.get_running_loop().time)
    first = asyncio.ensure_future(source.fetch_once())
    await asyncio.sleep(0)
    waiters = [asyncio.ensure_future(source.wait_usable()) for _ in range(20)]
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(first, *waiters)
    assert calls == 1
    assert source.current() == "tok"


async def test_failures_back_off_with_full_jitter_from_1_to_30_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ceilings: list[float] = []
    done = asyncio.Event()

    def uniform(low: float, high: float) -> float:
        assert low == 0
        ceilings.append(high)
        if len(ceilings) == 8:
            done.set()
        return 0.0

    monkeypatch.setattr(tokens_module.random, "uniform", uniform)

    async def failing() -> TokenGrant:
        raise TokenError("the token endpoint answered 500")

    reports: list[tuple[str, float | None]] = []
    source = TokenSource(failing, on_refresh=lambda r, e: reports.append((r, e)))
    await source.start()
    await asyncio.wait_for(done.wait(), 10)
    await source.close()
    assert ceilings[:8] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert reports[0] == ("error", None)
    assert source.problem() == (
        "the first access token could not be fetched: the token endpoint answered 500"
    )


async def test_invalidate_drops_only_the_current_token_and_fetches_at_once() -> None:
    issued = iter(["one", "two", "three"])

    async def fetch() -> TokenGrant:
        return TokenGrant(next(issued), 3600.0, asyncio.get_running_loop().time(), 0.0)

    source = TokenSource(fetch, clock=asyncio.get_running_loop().time)
    assert await source.fetch_once()
    source.invalidate("stale-older-token")  # not current: nothing happens
    assert source.current() == "one"
    source.invalidate("one")
    with pytest.raises(CredentialsUnavailable):
        source.current()
    await source.wait_usable()  # the fetch started by the invalidation
    assert source.current() == "two"
    await source.close()


def _signer_config(**fields: Any) -> OAuth2Config:
    base: dict[str, Any] = {
        "scheme": "oauth2-client-credentials",
        "token_url": "https://auth.example.com/oauth2/token",
        "client_id": "client-1",
        "client_secret": "secret-1",
    }
    return OAuth2Config.model_validate({**base, **fields})


def _pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.mark.parametrize(
    ("make", "algorithm"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
    ],
)
def test_private_key_jwt_assertion(make: Any, algorithm: str) -> None:
    key = make()
    config = _signer_config(
        auth_method="private_key_jwt",
        client_secret=None,
        private_key=_pem(key),
        key_id="kid-7",
        scope="a b",
        audience="https://api.example.com",
        resource=["https://r1", "https://r2"],
    )
    client = _client(config)
    form, headers = client.request_form(1_700_000_000.0)
    fields = dict(form)
    assert "Authorization" not in headers
    assert fields["client_assertion_type"] == (
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    )
    assert [value for name, value in form if name == "resource"] == ["https://r1", "https://r2"]
    assertion = fields["client_assertion"]
    header = jwt.get_unverified_header(assertion)
    assert (header["alg"], header["kid"]) == (algorithm, "kid-7")
    claims = jwt.decode(
        assertion,
        key.public_key(),
        algorithms=[algorithm],
        audience="https://auth.example.com/oauth2/token",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert (claims["iss"], claims["sub"]) == ("client-1", "client-1")
    assert claims["exp"] - claims["iat"] == 60
    second = dict(client.request_form(1_700_000_000.0)[0])["client_assertion"]
    assert jwt.decode(second, options={"verify_signature": False})["jti"] != claims["jti"]


def _client(config: OAuth2Config) -> TokenClient:
    return TokenClient(
        token_url=config.token_url,
        client_id=config.client_id.reveal(),
        auth_method=config.auth_method,
        client_secret=config.client_secret.reveal() if config.client_secret else None,
        private_key=config.private_key.reveal() if config.private_key else None,
        key_id=config.key_id.reveal() if config.key_id else None,
        params=config.token_params(),
        tls=TlsConfig(),
        timeout=5.0,
    )


def test_client_secret_basic_is_form_encoded_before_base64() -> None:
    client = _client(_signer_config(client_id="a b:c", client_secret="p%w/é"))
    form, headers = client.request_form(0.0)
    assert form == [("grant_type", "client_credentials")]
    decoded = base64.b64decode(headers["Authorization"].removeprefix("Basic ")).decode()
    assert decoded == "a+b%3Ac:p%25w%2F%C3%A9"


def _config_error(signer: dict[str, Any]) -> str:
    text = yaml.safe_dump(
        {
            "routes": [
                {
                    "name": "o",
                    "match": {"path_prefix": "/o"},
                    "upstream": "https://api.example.com",
                    "signer": {
                        "scheme": "oauth2-client-credentials",
                        "client_id": "c",
                        **signer,
                    },
                }
            ]
        }
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    return str(err.value)


@pytest.mark.parametrize(
    ("signer", "message"),
    [
        (
            {"token_url": "http://auth.example.com/t", "client_secret": "s"},
            "https:// is required",
        ),
        ({"token_url": "https://a.example/t"}, "client_secret_basic needs client_secret"),
        (
            {"token_url": "https://a.example/t", "auth_method": "private_key_jwt"},
            "private_key_jwt needs private_key",
        ),
        (
            {
                "token_url": "https://a.example/t",
                "auth_method": "private_key_jwt",
                "private_key": "not a key",
            },
            "private_key is not a PEM private key",
        ),
        (
            {
                "token_url": "https://a.example/t",
                "client_secret": "s",
                "extra_params": {"grant_type": "password"},
            },
            "grant_type cannot be set in extra_params",
        ),
        (
            {"token_url": "https://a.example/t", "client_secret": "s", "auth_method": "basic"},
            "routes[0].signer.auth_method",
        ),
    ],
)
def test_config_errors(signer: dict[str, Any], message: str) -> None:
    error = _config_error(signer)
    assert message in error
    assert "routes[0].signer" in error


def test_a_p384_or_small_rsa_key_is_refused() -> None:
    for key in (
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=1024),
    ):
        pem = _pem(key)
        error = _config_error(
            {
                "token_url": "https://a.example/t",
                "auth_method": "private_key_jwt",
                "private_key": pem,
            }
        )
        assert "ES256 needs P-256" in error or "at least 2048" in error
        assert pem.splitlines()[1] not in error


def _upstream_request() -> UpstreamRequest:
    request = request_for("https://api.example.com/x", "GET", {"Authorization": "Basic app"})
    return request


async def test_sign_sets_the_bearer_token_and_replaces_the_apps() -> None:
    signer = OAuth2Signer(_signer_config())
    with pytest.raises(CredentialsUnavailable):
        signer.sign(_upstream_request(), SigningContext(0))
    signer.tokens._token = AccessToken("tok-1", float("inf"), 0.0, float("inf"))
    signed = signer.sign(_upstream_request(), SigningContext(0)).request
    assert signed.headers.getall("Authorization") == ["Bearer tok-1"]
    shown = signer.sign_for_display(_upstream_request(), SigningContext(0)).request
    assert shown.headers.getall("Authorization") == ["Bearer <redacted>"]
    assert "secret-1" not in repr(signer)
    refused = signed.replace(headers=CIMultiDictProxy(CIMultiDict(signed.headers)))
    signer.on_upstream_status(401, refused)
    with pytest.raises(CredentialsUnavailable):
        signer.sign(_upstream_request(), SigningContext(0))
    await signer.close()  # the renewal it started (towards an unreachable example.com)


def test_sign_command_redacts_and_fetches_only_with_the_flag(tmp_path: Path) -> None:
    fetched: list[dict[str, str]] = []

    with running_upstream() as endpoint:

        async def token(request: Any) -> Any:
            from aiohttp import web

            fetched.append(dict(parse_qsl((await request.read()).decode())))
            return web.json_response({"access_token": "cli-token-Hq2", "token_type": "Bearer"})

        endpoint.handlers["/token"] = token
        config = {
            "routes": [
                {
                    "name": "o",
                    "match": {"path_prefix": "/o"},
                    "upstream": "https://api.example.com",
                    "signer": {
                        "scheme": "oauth2-client-credentials",
                        "token_url": f"{endpoint.url}/token",
                        "client_id": "c",
                        "client_secret": "cli-secret-Lk4",
                    },
                }
            ]
        }
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        outputs = []
        for extra in ([], ["--fetch-token"]):
            result = subprocess.run(
                [sys.executable, "-m", "proxy", "sign", "--config", str(path), *extra, "/o/x"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            outputs.append(result.stdout + result.stderr)
            assert len(fetched) == len(outputs) - 1  # a token only with --fetch-token
    for output in outputs:
        assert "Authorization: Bearer <redacted>" in output
        assert "cli-token-Hq2" not in output
        assert "cli-secret-Lk4" not in output
    assert "an access token was fetched" in outputs[1]
