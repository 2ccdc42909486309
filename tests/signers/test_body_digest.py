"""A body hashed as it arrives (spooled to disk) signs exactly as the same bytes in memory."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.signers import SIGNERS, Signer
from proxy.signers.base import SigningContext, UpstreamRequest

CONFIGS: dict[str, dict[str, Any]] = {
    "devo": {"api_key": "k-digest", "api_secret": "s-digest"},
    "devengo": {"api_key_id": "id-digest", "secret": "s-digest"},
    "aws-sigv4": {
        "service": "s3",
        "region": "eu-west-1",
        "access_key_id": "AKIDDIGEST",
        "secret_access_key": "secret-digest",
    },
}
CTX = SigningContext(now_ms=1_700_000_000_123, nonce="0b9e5a2c-3f1d-4e8a-9b7c-6d5e4f3a2b1c")


def _signer(scheme: str) -> Signer:
    cls = SIGNERS[scheme]
    config = cls.config_model.model_validate({"scheme": scheme, **CONFIGS[scheme]})
    return cls.create(config, route="digest", on_refresh=None)


def _request(body: bytes | None, **extra: Any) -> UpstreamRequest:
    headers = CIMultiDictProxy(CIMultiDict({"Host": "h.example.com", "Content-Type": "x/y"}))
    return UpstreamRequest("PUT", "https", "h.example.com", "/b/k", "", headers, body, **extra)


class _Spooled:
    def __init__(self, size: int) -> None:
        self.size = size


@pytest.mark.parametrize("scheme", sorted(CONFIGS))
@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=5000), cuts=st.lists(st.integers(0, 5000), max_size=8))
def test_digest_path_signs_like_bytes(scheme: str, body: bytes, cuts: list[int]) -> None:
    signer = _signer(scheme)
    digest = signer.new_body_digest()
    assert digest is not None
    edges = sorted({0, len(body), *(c for c in cuts if c <= len(body))})
    for start, end in itertools.pairwise(edges):
        digest.update(body[start:end])
    in_memory = signer.sign(_request(body), CTX).request
    spooled = signer.sign(
        _request(None, body_digest=digest, spooled=_Spooled(len(body))), CTX
    ).request
    names = [n for n in in_memory.headers if n.lower() != "content-length"]
    assert [(n, spooled.headers[n]) for n in names] == [(n, in_memory.headers[n]) for n in names]


@pytest.mark.parametrize("scheme", sorted(CONFIGS))
def test_digest_can_sign_twice(scheme: str) -> None:
    # A retry signs again (a new time): the digest must not be consumed by the first signature.
    signer = _signer(scheme)
    digest = signer.new_body_digest()
    assert digest is not None
    digest.update(b"x" * 1000)
    request = _request(None, body_digest=digest, spooled=_Spooled(1000))
    first = signer.sign(request, CTX).request
    again = signer.sign(request, CTX).request
    assert dict(first.headers) == dict(again.headers)


def test_schemes_that_need_the_bytes_offer_no_digest() -> None:
    jscrambler = SIGNERS["jscrambler"]
    config = jscrambler.config_model.model_validate(
        {"scheme": "jscrambler", "access_key": "a", "secret_key": "b"}
    )
    assert jscrambler(config).new_body_digest() is None  # type: ignore[call-arg]
