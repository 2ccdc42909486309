"""Devengo: the golden vectors, then the signer against the independent verifier."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.signers import SIGNERS
from proxy.signers.base import SigningContext, UpstreamRequest
from proxy.signers.bearer import BearerConfig, BearerSigner
from proxy.signers.devengo import DevengoConfig, DevengoSigner
from tests.conftest import load_vectors
from tests.signers.helpers import request_for
from tests.verifiers.devengo import verify_devengo

VECTORS = load_vectors("devengo")
KEY_ID = "ak_Public-Id-4b2a"
SECRET = "sk_Distinctive-Secret-8e7f"
NOW_S = 1_700_000_000
CTX = SigningContext(now_ms=NOW_S * 1000 + 999, nonce="0b9e5a2c-3f1d-4e8a-9b7c-6d5e4f3a2b1c")
OURS = {
    "x-devengo-api-key-signature",
    "x-devengo-api-key-nonce",
    "x-devengo-api-key-timestamp",
    "x-devengo-api-key-id",
}


def make_signer(api_key_id: str = KEY_ID, secret: str = SECRET) -> DevengoSigner:
    config = DevengoConfig.model_validate(
        {"scheme": "devengo", "api_key_id": api_key_id, "secret": secret}
    )
    return DevengoSigner(config)


def make_request(
    method: str = "POST",
    body: bytes | None = b"",
    headers: list[tuple[str, str]] | dict[str, str] | None = None,
    url: str = "https://api.sandbox.devengo.com/v1/payments",
) -> UpstreamRequest:
    return request_for(url, method, headers, body)


def vector_request(vector: dict[str, Any]) -> UpstreamRequest:
    body = None if vector["body_absent"] else base64.b64decode(vector["body_b64"])
    return make_request(vector["method"], body, vector["headers_in"], vector["url"])


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    expected = vector["expected"]
    creds = vector["credentials"]
    if "jwt" in creds:  # the deprecated JWT mode is the `bearer` scheme
        config = BearerConfig.model_validate({"scheme": "bearer", "token": creds["jwt"]})
        out = BearerSigner(config).sign(vector_request(vector), CTX).request
        assert dict(out.headers) == expected["headers_out"]
        return
    now_s = int(vector["time"]["timestamp_s"])
    ctx = SigningContext(now_ms=now_s * 1000 + 456, nonce=vector["nonce"])
    request = vector_request(vector)
    result = make_signer(**creds).sign(request, ctx)

    assert result.string_to_sign == expected["string_to_sign"]
    assert result.request.headers["X-Devengo-Api-Key-Signature"] == expected["signature"]
    added = {k: v for k, v in result.request.headers.items() if k not in request.headers}
    assert added == expected["headers_out"]  # exact names, exact values
    assert (result.request.body, result.request.url) == (request.body, request.url)
    assert verify_devengo(result.request.headers, request.body, now_s=now_s, **creds)


STALE_NAMES = ["Authorization", "AUTHORIZATION", "X-Devengo-Api-Key-Signature", "x-devengo-"]
STALE_NAMES += ["x-devengo-api-key-nonce", "X-DEVENGO-API-KEY-TIMESTAMP", "x-Devengo-Api-Key-Id"]
stale_names = st.sampled_from([*STALE_NAMES, "X-Devengo-Other"])
other_names = st.sampled_from(["Content-Type", "X-Request-Id", "Accept", "X-Devengo", "X-Api"])
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    body=st.one_of(st.none(), st.binary(max_size=200)),
    stale=st.lists(st.tuples(stale_names, header_values), max_size=5),
    others=st.lists(st.tuples(other_names, header_values), max_size=4),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    nonce=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
)
def test_signed_requests_verify_and_stale_credentials_never_survive(
    body: bytes | None,
    stale: list[tuple[str, str]],
    others: list[tuple[str, str]],
    method: str,
    nonce: str,
) -> None:
    request = make_request(method, body, stale + others)
    ctx = SigningContext(now_ms=NOW_S * 1000, nonce=nonce)
    out = make_signer().sign(request, ctx).request

    assert verify_devengo(out.headers, body, KEY_ID, SECRET, now_s=NOW_S)
    names = [name.lower() for name in out.headers]
    assert "authorization" not in names
    assert sorted(n for n in names if n.startswith("x-devengo-")) == sorted(OURS)
    assert out.headers["X-Devengo-Api-Key-Nonce"] == nonce
    assert out.headers["X-Devengo-Api-Key-Timestamp"] == str(NOW_S)
    assert [(k, v) for k, v in out.headers.items() if k.lower() not in OURS] == others
    assert out.body == body


@settings(max_examples=200, deadline=None)
@given(body=st.binary(min_size=1, max_size=200), data=st.data())
def test_tampered_body_is_rejected(body: bytes, data: st.DataObject) -> None:
    out = make_signer().sign(make_request(body=body), CTX).request
    index = data.draw(st.integers(0, len(body) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    assert verify_devengo(out.headers, body, KEY_ID, SECRET)
    assert not verify_devengo(out.headers, tampered, KEY_ID, SECRET)


def test_tampered_headers_and_wrong_credentials_are_rejected() -> None:
    out = make_signer().sign(make_request(body=b'{"amount": 1}'), CTX).request
    headers = dict(out.headers)
    assert verify_devengo(headers, b'{"amount": 1}', KEY_ID, SECRET)
    for name, value in [
        ("X-Devengo-Api-Key-Nonce", "other-nonce"),
        ("X-Devengo-Api-Key-Timestamp", str(NOW_S + 1)),
        ("X-Devengo-Api-Key-Signature", "A" + headers["X-Devengo-Api-Key-Signature"][1:]),
    ]:
        assert not verify_devengo({**headers, name: value}, b'{"amount": 1}', KEY_ID, SECRET)
    assert not verify_devengo(headers, b'{"amount": 1}', KEY_ID, "other-secret")
    assert not verify_devengo(headers, b'{"amount": 1}', "other-id", SECRET)
    assert not verify_devengo(headers, b"", KEY_ID, SECRET)
    # A second copy of one of the four headers (a stale one) is refused.
    duplicated = [*out.headers.items(), ("x-devengo-api-key-nonce", CTX.nonce)]
    assert not verify_devengo(duplicated, b'{"amount": 1}', KEY_ID, SECRET)


def test_old_timestamps_rejected_when_asked() -> None:
    out = make_signer().sign(make_request(), CTX).request
    assert verify_devengo(out.headers, b"", KEY_ID, SECRET, now_s=NOW_S + 60)
    assert not verify_devengo(out.headers, b"", KEY_ID, SECRET, now_s=NOW_S + 61)


def test_body_is_strict_base64_and_absent_equals_empty() -> None:
    body = bytes(range(256)) * 2  # > 45 bytes: MIME base64 would insert line breaks
    result = make_signer().sign(make_request(body=body), CTX)
    assert "\n" not in result.string_to_sign
    assert result.string_to_sign.startswith(base64.b64encode(body).decode())
    absent = make_signer().sign(make_request(body=None), CTX)
    empty = make_signer().sign(make_request(body=b""), CTX)
    assert absent.request.headers == empty.request.headers


def test_uses_the_context_time_and_nonce() -> None:
    out = make_signer().sign(make_request(), CTX).request
    assert out.headers["X-Devengo-Api-Key-Timestamp"] == "1700000000"  # seconds, floored
    assert out.headers["X-Devengo-Api-Key-Nonce"] == CTX.nonce
    fresh = make_signer().sign(make_request(), SigningContext.now()).request
    assert fresh.headers["X-Devengo-Api-Key-Nonce"] != CTX.nonce


def test_registered_and_reads_the_body() -> None:
    assert SIGNERS["devengo"] is DevengoSigner
    assert make_signer().needs_body("GET") is True


def test_secrets_never_in_repr() -> None:
    config = DevengoConfig.model_validate(
        {"scheme": "devengo", "api_key_id": KEY_ID, "secret": SECRET}
    )
    signer = DevengoSigner(config)
    result = signer.sign(make_request(body=b"x"), CTX)
    shown = [repr(config), str(config), repr(signer), str(signer), config.model_dump_json()]
    shown += [repr(result.request), str(result.request), result.string_to_sign]
    for text in shown:
        assert SECRET not in text
    for text in shown[:5] + shown[5:7]:
        assert KEY_ID not in text
