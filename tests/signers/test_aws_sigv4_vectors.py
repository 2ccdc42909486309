"""Every vector in vectors/aws-sigv4.json.

With the proxy's default header set: where it signs the same headers as the vector, the
canonical request, string to sign, signature and output must be equal; where it signs fewer
(the vector signs every header, the proxy only host/x-amz-*/content-type/content-md5), botocore
recomputes the signature over the headers the proxy did sign. Each vector is also run with
`signed_headers` listing its headers, which must reproduce it exactly.
"""

from __future__ import annotations

import base64
import calendar
import time
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.signers.aws_sigv4 import AwsSigV4Config, AwsSigV4Signer
from proxy.signers.base import SigningContext, SignResult, UpstreamRequest
from tests.conftest import load_vectors
from tests.verifiers.aws_sigv4 import botocore_recompute, signature_of, signed_header_names

VECTORS = load_vectors("aws-sigv4")
MASK = "**********"


def test_published_vector_count() -> None:
    assert len(VECTORS) == 9  # docs/schemes.md#vector-files


def ctx_of(vector: dict[str, Any]) -> SigningContext:
    seconds = calendar.timegm(time.strptime(vector["time"]["amz_date"], "%Y%m%dT%H%M%SZ"))
    return SigningContext(now_ms=seconds * 1000, nonce="")


def vector_request(vector: dict[str, Any]) -> UpstreamRequest:
    """The request as an app sends it: the URL's raw path, the decoded query re-encoded the way
    a lenient client does (reserved characters it may leave alone stay raw)."""
    # `url` shows the query decoded (it may hold '&' inside a value): rebuild it from the pairs.
    url = vector["url"]
    parts = urlsplit(url.split("?", 1)[0])
    query = "&".join(
        f"{quote(k, safe='/:@!$()*,;~')}={quote(v, safe='/:@!$()*,;~')}"
        for k, v in vector["query_decoded"]
    )
    body = None if vector["body_absent"] else base64.b64decode(vector["body_b64"])
    return UpstreamRequest(
        method=vector["method"],
        scheme=parts.scheme,
        host=parts.netloc,
        path=parts.path,
        query=query,
        headers=CIMultiDictProxy(CIMultiDict(vector["headers_in"])),
        body=b"" if body is None else body,
    )


def sign_vector(vector: dict[str, Any], *, sign_all: bool) -> SignResult:
    creds = vector["credentials"]
    raw: dict[str, Any] = {
        "scheme": "aws-sigv4",
        "service": creds["service"],
        "region": creds["region"],
        "access_key_id": creds["access_key_id"],
        "secret_access_key": creds["secret_access_key"],
    }
    if creds["session_token"]:
        raw["session_token"] = creds["session_token"]
    if vector["presign_expires"] is not None:
        raw["presign_expires"] = vector["presign_expires"]
    if sign_all:
        raw["signed_headers"] = [name.lower() for name in vector["headers_in"]]
    signer = AwsSigV4Signer(AwsSigV4Config.model_validate(raw))
    return signer.sign(vector_request(vector), ctx_of(vector))


def expected_signed_headers(vector: dict[str, Any]) -> list[str]:
    expected = vector["expected"]
    # The canonical request's sixth line is the SignedHeaders list.
    return str(expected["canonical_request"].split("\n")[-2]).split(";")


def assert_exact(vector: dict[str, Any], result: SignResult) -> None:
    expected = vector["expected"]
    token = vector["credentials"]["session_token"]
    creq = expected["canonical_request"]
    if token:
        creq = creq.replace(token, MASK).replace(quote(token, safe=""), MASK)
    assert result.details["canonical_request"] == creq
    assert result.string_to_sign == expected["string_to_sign"]
    assert signature_of(result.request) == expected["signature"]
    for name, value in expected["headers_out"].items():
        assert result.request.headers.getall(name) == [value]
    if expected["signed_url"] is not None:
        assert result.request.url == expected["signed_url"]
    else:
        assert "X-Amz-Signature" not in result.request.query


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_with_default_headers(vector: dict[str, Any]) -> None:
    result = sign_vector(vector, sign_all=False)
    ours = signed_header_names(result.request)
    if ours == expected_signed_headers(vector):
        assert_exact(vector, result)
        return
    # The proxy signed fewer headers than the vector: botocore must agree with what it signed.
    assert set(ours) < set(expected_signed_headers(vector))
    creds = vector["credentials"]
    again = botocore_recompute(
        result.request,
        access_key=creds["access_key_id"],
        secret_key=creds["secret_access_key"],
        token=creds["session_token"],
        region=creds["region"],
        service=creds["service"],
        amz_date=vector["time"]["amz_date"],
    )
    assert again.string_to_sign == result.string_to_sign
    assert again.signature == signature_of(result.request)


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_signing_its_headers(vector: dict[str, Any]) -> None:
    assert_exact(vector, sign_vector(vector, sign_all=True))


def test_default_set_differs_only_for_custom_headers() -> None:
    """Only the vector with a non-x-amz custom header is signed differently by default."""
    differing = [
        v["name"]
        for v in VECTORS
        if signed_header_names(sign_vector(v, sign_all=False).request) != expected_signed_headers(v)
    ]
    assert differing == ["header-whitespace-and-case"]
