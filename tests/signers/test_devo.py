"""Devo (`devo`, `devo-token`): the golden vectors, the rules of docs/schemes.md#devo, and
properties checked against the independent verifier in `tests/verifiers/devo.py`."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.signers import SIGNERS
from proxy.signers.base import SigningContext, UpstreamRequest
from proxy.signers.devo import DevoConfig, DevoSigner, DevoTokenConfig, DevoTokenSigner
from tests.conftest import load_vectors
from tests.signers.helpers import request_for
from tests.verifiers.devo import verify_devo, verify_devo_token

pytestmark = pytest.mark.smoke  # also run on the lowest dependency versions (.ci/run)

VECTORS = load_vectors("devo")
NOW = 1_700_000_000_123


def make_request(
    url: str = "https://api-us.devo.com/probio/operation",
    method: str = "POST",
    headers: CIMultiDict[str] | dict[str, str] | None = None,
    body: bytes | None = b"",
) -> UpstreamRequest:

    return request_for(url, method, headers, body)


def devo_signer(
    key: str = "key", secret: str = "secret", key_header: str = "reseller"
) -> DevoSigner:
    return DevoSigner(
        DevoConfig.model_validate(
            {"scheme": "devo", "api_key": key, "api_secret": secret, "key_header": key_header}
        )
    )


def _is_devo_credential(name: str) -> bool:
    return name.lower().startswith("x-logtrust-") or name.lower() == "standalonetoken"


def devo_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    names = [name for name in headers if _is_devo_credential(name)]
    assert len(names) == len(set(names)), "a Devo header is sent twice"
    return {name: headers[name] for name in names}


# -- golden vectors --------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    creds, expected = dict(vector["credentials"]), vector["expected"]
    mode = creds.pop("mode")
    body = base64.b64decode(vector["body_b64"] or "")
    request = make_request(vector["url"], vector["method"], vector.get("headers_in"), body)

    if mode == "standalone-token":
        token_signer = DevoTokenSigner(DevoTokenConfig(scheme="devo-token", token=creds["token"]))
        result = token_signer.sign(request, SigningContext(now_ms=NOW, nonce="-"))
        assert verify_devo_token(result.request.headers, creds["token"])
    else:
        signer = devo_signer(creds["api_key"], creds["api_secret"], mode)
        now_ms = int(vector["time"]["timestamp_ms"])
        result = signer.sign(request, SigningContext(now_ms=now_ms, nonce="-"))
        assert verify_devo(
            result.request.headers, body, creds["api_key"], creds["api_secret"], mode
        )
        if "string_to_sign_b64" in expected:  # the exact bytes; shown escaped where not UTF-8
            message = base64.b64decode(expected["string_to_sign_b64"])
            assert result.string_to_sign == message.decode(errors="backslashreplace")
        if _is_utf8(body):
            assert result.string_to_sign == expected["string_to_sign"]
        assert result.request.headers["x-logtrust-sign"] == expected["signature"]

    assert devo_headers(result.request.headers) == expected["headers_out"]
    sent_others = [(k, v) for k, v in result.request.headers.items() if not _is_devo_credential(k)]
    app_others = [(k, v) for k, v in request.headers.items() if not _is_devo_credential(k)]
    assert sent_others == app_others
    assert result.request.replace(headers=request.headers) == request  # body, URL untouched


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


# -- rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_header", "name"),
    [
        ("reseller", "x-logtrust-reseller-apikey"),
        ("domain", "x-logtrust-domain-apikey"),
        ("query", "x-logtrust-apikey"),
    ],
)
def test_key_header_choice(key_header: str, name: str) -> None:
    result = devo_signer(key_header=key_header).sign(make_request(), SigningContext(NOW, "-"))
    assert set(devo_headers(result.request.headers)) == {
        name,
        "x-logtrust-timestamp",
        "x-logtrust-sign",
    }
    assert verify_devo(result.request.headers, b"", "key", "secret", key_header)


def test_absent_and_empty_body_sign_alike() -> None:
    signer, ctx = devo_signer(), SigningContext(NOW, "-")
    absent = signer.sign(make_request(method="GET", body=None), ctx)
    empty = signer.sign(make_request(method="GET", body=b""), ctx)
    assert absent.string_to_sign == empty.string_to_sign == f"key{NOW}"
    assert absent.request.headers == empty.request.headers


def test_binary_body_signed_raw_shown_escaped_and_warned() -> None:
    body = b"\xff\x00ok\xe2\x82"
    result = devo_signer().sign(make_request(body=body), SigningContext(NOW, "-"))
    assert result.string_to_sign == f"key\\xff\x00ok\\xe2\\x82{NOW}"
    assert "warning" in result.details
    assert verify_devo(result.request.headers, body, "key", "secret")
    assert devo_signer().sign(make_request(body=b"{}"), SigningContext(NOW, "-")).details == {}


def test_body_policy() -> None:
    assert devo_signer().needs_body("GET") is True
    token_signer = DevoTokenSigner(DevoTokenConfig(scheme="devo-token", token="t"))
    assert token_signer.needs_body("POST") is False


def test_token_signer_drops_stale_hmac_headers() -> None:
    stale = {"X-Logtrust-Sign": "old", "x-logtrust-timestamp": "1", "STANDALONETOKEN": "old"}
    signer = DevoTokenSigner(DevoTokenConfig(scheme="devo-token", token="tok"))
    result = signer.sign(make_request(headers={**stale, "Accept": "*/*"}), SigningContext(NOW, "-"))
    assert list(result.request.headers.items()) == [("Accept", "*/*"), ("standAloneToken", "tok")]
    assert verify_devo_token(result.request.headers, "tok")
    assert not verify_devo_token(make_request(headers=stale).headers, "tok")


# -- properties against the independent verifier ---------------------------------------------

_DEVO_NAMES = st.sampled_from(
    [
        "x-logtrust-sign",
        "X-Logtrust-Sign",
        "x-logtrust-timestamp",
        "X-LOGTRUST-TIMESTAMP",
        "x-logtrust-reseller-apikey",
        "x-logtrust-domain-apikey",
        "X-Logtrust-Apikey",
        "x-logtrust-whatever",
        "standAloneToken",
        "standalonetoken",
    ]
)
_OTHER_NAMES = st.sampled_from(["Content-Type", "Accept", "X-Request-Id", "Authorization", "x-log"])
_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
HEADERS = st.lists(st.tuples(st.one_of(_DEVO_NAMES, _OTHER_NAMES), _VALUE), max_size=8)
KEY_HEADERS = st.sampled_from(["reseller", "domain", "query"])
CREDENTIAL = st.text(min_size=1, max_size=12)
# The key goes into a header: control characters (C0 but tab, and DEL) are a config error.
HEADER_UNSAFE = frozenset(chr(c) for c in (*range(0x09), *range(0x0A, 0x20), 0x7F))
KEY = CREDENTIAL.filter(HEADER_UNSAFE.isdisjoint)
STALE = "STALE-VALUE"


@settings(max_examples=200, deadline=None)
@given(
    headers=HEADERS,
    body=st.one_of(st.none(), st.binary(max_size=64), st.text(max_size=32).map(str.encode)),
    key=KEY,
    secret=CREDENTIAL,
    key_header=KEY_HEADERS,
    now_ms=st.integers(0, 2**53),
)
def test_signed_headers_verify_and_replace_stale_ones(
    headers: list[tuple[str, str]],
    body: bytes | None,
    key: str,
    secret: str,
    key_header: str,
    now_ms: int,
) -> None:
    app_headers = CIMultiDict(
        (name, STALE if _is_devo_credential(name) else value) for name, value in headers
    )
    request = make_request(headers=app_headers, body=body)
    result = devo_signer(key, secret, key_header).sign(request, SigningContext(now_ms, "-"))
    sent = result.request.headers

    assert verify_devo(sent, body or b"", key, secret, key_header, now_ms=now_ms)
    assert STALE not in sent.values()
    others = [(k, v) for k, v in app_headers.items() if not _is_devo_credential(k)]
    assert list(sent.items())[: len(others)] == others  # the app's other headers, in order
    assert len(sent) == len(others) + 3
    assert result.request.body == body


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(min_size=1, max_size=64),
    position=st.integers(min_value=0),
    tamper=st.sampled_from(["body", "timestamp", "key", "secret", "key_header", "extra"]),
)
def test_verifier_rejects_tampered_requests(body: bytes, position: int, tamper: str) -> None:
    result = devo_signer().sign(make_request(body=body), SigningContext(NOW, "-"))
    headers = CIMultiDict(result.request.headers)
    key, secret, key_header = "key", "secret", "reseller"
    if tamper == "body":
        index = position % len(body)
        body = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]
    elif tamper == "timestamp":
        headers["x-logtrust-timestamp"] = str(NOW + 1)
    elif tamper == "key":
        key = "key2"
    elif tamper == "secret":
        secret = "secret2"
    elif tamper == "key_header":
        key_header = "domain"
    else:
        headers.add("x-logtrust-domain-apikey", "key")
    assert not verify_devo(headers, body, key, secret, key_header)


def test_verifier_rejects_stale_duplicate_and_skewed() -> None:
    result = devo_signer().sign(make_request(), SigningContext(NOW, "-"))
    headers = CIMultiDict(result.request.headers)
    assert verify_devo(headers, b"", "key", "secret", now_ms=NOW)
    assert not verify_devo(headers, b"", "key", "secret", now_ms=NOW + 600_000)
    headers.add("X-Logtrust-Sign", "0" * 64)
    assert not verify_devo(headers, b"", "key", "secret")


# -- config, registry, secrecy ---------------------------------------------------------------

API_KEY = "APIKEY-51d0-never-print-me"
API_SECRET = "APISECRET-0a4f-never-print-me"
TOKEN = "STANDALONE-c2e8-never-print-me"


def test_secrets_never_in_repr_or_str(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVO_API_SECRET", API_SECRET)
    monkeypatch.setenv("DEVO_TOKEN", TOKEN)
    config = DevoConfig.model_validate(
        {"scheme": "devo", "api_key": API_KEY, "api_secret": {"env": "DEVO_API_SECRET"}}
    )
    token_config = DevoTokenConfig.model_validate(
        {"scheme": "devo-token", "token": {"env": "DEVO_TOKEN"}}
    )
    ctx = SigningContext(NOW, "-")
    cases = [
        (config, DevoSigner(config), DevoSigner(config).sign(make_request(body=b"{}"), ctx)),
        (
            token_config,
            DevoTokenSigner(token_config),
            DevoTokenSigner(token_config).sign(make_request(), ctx),
        ),
    ]
    for cfg, signer, result in cases:
        for shown in (cfg, signer, result.request):
            for text in (repr(shown), str(shown)):
                for secret in (API_KEY, API_SECRET, TOKEN):
                    assert secret not in text
        assert API_SECRET not in repr(result)
        assert TOKEN not in repr(result)


def test_registered() -> None:
    assert SIGNERS["devo"] is DevoSigner
    assert SIGNERS["devo-token"] is DevoTokenSigner


def test_default_key_header_and_invalid_config() -> None:
    from pydantic import ValidationError

    config = DevoConfig.model_validate({"scheme": "devo", "api_key": "k", "api_secret": "s"})
    assert config.key_header == "reseller"
    with pytest.raises(ValidationError):
        DevoConfig.model_validate(
            {"scheme": "devo", "api_key": "k", "api_secret": "s", "key_header": "tenant"}
        )
    with pytest.raises(ValidationError):
        DevoTokenConfig.model_validate({"scheme": "devo-token", "token": {"env": "NOT_SET_XYZ"}})
