"""An independent SigV4 check: botocore's own signer recomputes what the proxy signed.

The proxy signs a chosen subset of headers; botocore signs every header it is given. So the
request handed to botocore is the signed request as it goes upstream (method, URL with the
path and query as sent, body) with exactly the headers named in the proxy's `SignedHeaders`.
botocore's step methods (canonical request, string to sign, signature) are called with the
proxy's timestamp; `add_auth` is not used, as it would take the wall clock and add headers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from botocore.auth import (  # type: ignore[import-untyped]
    S3SigV4Auth,
    S3SigV4QueryAuth,
    SigV4Auth,
    SigV4QueryAuth,
)
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]

from proxy.signers.base import UpstreamRequest

_SIGNED_HEADERS = re.compile(r"SignedHeaders=([^,]+)")
_SIGNATURE = re.compile(r"Signature=([0-9a-f]{64})")
S3_LIKE = {"s3", "s3-object-lambda", "s3-outposts"}


@dataclass(frozen=True)
class BotocoreResult:
    canonical_request: str
    string_to_sign: str
    signature: str


def botocore_recompute(
    signed: UpstreamRequest,
    *,
    access_key: str,
    secret_key: str,
    token: str | None,
    region: str,
    service: str,
    amz_date: str,
) -> BotocoreResult:
    """botocore's canonical request, string to sign and signature for the proxy's output."""
    presigned = "Authorization" not in signed.headers
    if presigned:
        query = [(k, v) for k, v in parse_qsl(signed.query, keep_blank_values=True)]
        names = next(v for k, v in query if k == "X-Amz-SignedHeaders").split(";")
        # The URL as signed: the same query without the signature (botocore reads it raw).
        raw = "&".join(p for p in signed.query.split("&") if not p.startswith("X-Amz-Signature="))
        url = f"{signed.scheme}://{signed.host}{signed.path}" + (f"?{raw}" if raw else "")
    else:
        match = _SIGNED_HEADERS.search(signed.headers["Authorization"])
        assert match is not None
        names = match.group(1).split(";")
        url = signed.url
    request = AWSRequest(method=signed.method, url=url, data=signed.body or b"")
    for name, value in signed.headers.items():
        if name.lower() in names:
            request.headers[name] = value  # email.message semantics: appends repeats
    s3 = service in S3_LIKE
    if presigned:
        cls = S3SigV4QueryAuth if s3 else SigV4QueryAuth
        auth = cls(Credentials(access_key, secret_key, token), service, region, expires=1)
    else:
        cls = S3SigV4Auth if s3 else SigV4Auth
        auth = cls(Credentials(access_key, secret_key, token), service, region)
    request.context["timestamp"] = amz_date
    canonical = auth.canonical_request(request)
    to_sign = auth.string_to_sign(request, canonical)
    return BotocoreResult(canonical, to_sign, auth.signature(to_sign, request))


def signature_of(signed: UpstreamRequest) -> str:
    if "Authorization" in signed.headers:
        found = _SIGNATURE.search(signed.headers["Authorization"])
        assert found is not None
        return found.group(1)
    return dict(parse_qsl(signed.query))["X-Amz-Signature"]


def signed_header_names(signed: UpstreamRequest) -> list[str]:
    if "Authorization" in signed.headers:
        found = _SIGNED_HEADERS.search(signed.headers["Authorization"])
        assert found is not None
        return found.group(1).split(";")
    return dict(parse_qsl(signed.query))["X-Amz-SignedHeaders"].split(";")


def split_url(url: str) -> tuple[str, str, str, str]:
    """(scheme, host, raw path, raw query) without any decoding."""
    parts = urlsplit(url)
    return parts.scheme, parts.netloc, parts.path, parts.query
