"""AWS Signature Version 4's canonical form, step by step (docs/schemes.md#aws-signature-version-4).

Small pure functions, one per step, in the order AWS describes them: `canonical_uri`,
`canonical_query`, `canonical_headers`, `signed_headers`, `payload_hash`, `canonical_request`,
`string_to_sign`, `signing_key`, `signature` (plus `credential_scope` and `authorization`),
and the protocol's names and constants. `aws_sigv4.py` chains them into a signature.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Sequence
from typing import Final

from multidict import CIMultiDictProxy

from proxy.http import HOP_BY_HOP, connection_tokens

# -- protocol constants -------------------------------------------------------------------------

ALGORITHM: Final = "AWS4-HMAC-SHA256"
KEY_PREFIX: Final = "AWS4"
SCOPE_TERMINATOR: Final = "aws4_request"
AMZ_DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"
UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"
EMPTY_PAYLOAD_SHA256: Final = hashlib.sha256(b"").hexdigest()

HEADER_AUTHORIZATION: Final = "Authorization"
HEADER_HOST: Final = "Host"
HEADER_DATE: Final = "X-Amz-Date"
HEADER_SECURITY_TOKEN: Final = "X-Amz-Security-Token"  # noqa: S105 - a header name
HEADER_CONTENT_SHA256: Final = "X-Amz-Content-Sha256"

QUERY_ALGORITHM: Final = "X-Amz-Algorithm"
QUERY_CREDENTIAL: Final = "X-Amz-Credential"
QUERY_DATE: Final = "X-Amz-Date"
QUERY_EXPIRES: Final = "X-Amz-Expires"
QUERY_SIGNED_HEADERS: Final = "X-Amz-SignedHeaders"
QUERY_SECURITY_TOKEN: Final = "X-Amz-Security-Token"  # noqa: S105 - a parameter name
QUERY_SIGNATURE: Final = "X-Amz-Signature"
PRESIGN_MAX_EXPIRES: Final = 604_800  # seven days, the SigV4 maximum

# Removed from the app's request before signing: the app never chooses them.
INCOMING_AUTH_HEADERS: Final = (
    HEADER_AUTHORIZATION,
    HEADER_DATE,
    HEADER_SECURITY_TOKEN,
    HEADER_CONTENT_SHA256,
)
INCOMING_AUTH_QUERY_PARAMS: Final = frozenset(
    name.lower().encode()
    for name in (
        QUERY_ALGORITHM,
        QUERY_CREDENTIAL,
        QUERY_DATE,
        QUERY_EXPIRES,
        QUERY_SIGNED_HEADERS,
        QUERY_SECURITY_TOKEN,
        QUERY_SIGNATURE,
    )
)

# Services signed with S3's rules (single path encoding, no normalisation, content hash header).
S3_SERVICES: Final = frozenset({"s3", "s3-object-lambda", "s3-outposts"})

# Signed whenever present, besides `x-amz-*` and the route's `signed_headers`.
DEFAULT_SIGNED_HEADERS: Final = frozenset({"host", "content-type", "content-md5"})
SIGNED_HEADER_PREFIX: Final = "x-amz-"
# Never signed, even when listed: hop-by-hop headers (proxies change them), tracing headers
# (tracers add and rewrite them) and the signature itself.
NEVER_SIGNED: Final = HOP_BY_HOP | frozenset(
    {
        "authorization",
        "x-amzn-trace-id",
        "traceparent",
        "tracestate",
        "baggage",
        "b3",
        "uber-trace-id",
        "x-cloud-trace-context",
        "grpc-trace-bin",
    }
)
NEVER_SIGNED_PREFIXES: Final = ("proxy-", "x-b3-", "uberctx-")

_PATH_NOT_ALLOWED: Final = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/%]+")
_HEADER_WHITESPACE: Final = re.compile(r"[ \t]+")

QueryPair = tuple[bytes, bytes | None]
"""A decoded query parameter; the value is None when the parameter had no `=`."""


# -- encoding helpers ---------------------------------------------------------------------------


def as_bytes(text: str) -> bytes:
    # aiohttp keeps undecodable request bytes as surrogates; this gives the original bytes back.
    return text.encode("utf-8", "surrogateescape")


_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"
)
_ENCODE_TABLE: Final = tuple(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in range(256))
_HEX: Final = frozenset(b"0123456789ABCDEFabcdef")


def uri_encode(data: bytes) -> str:
    """RFC 3986 encoding: unreserved characters (`A-Z a-z 0-9 - _ . ~`) kept, the rest `%XX`."""
    return "".join(_ENCODE_TABLE[byte] for byte in data)


def percent_decode(text: str) -> bytes:
    """`%XX` escapes decoded to bytes; anything else (including `+` and a stray `%`) kept."""
    data = as_bytes(text)
    if b"%" not in data:
        return data
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        byte = data[i]
        if byte == 0x25 and i + 2 < n and data[i + 1] in _HEX and data[i + 2] in _HEX:
            out.append(int(data[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(byte)
            i += 1
    return bytes(out)


# -- path ---------------------------------------------------------------------------------------


def remove_dot_segments(path: str) -> str:
    """SigV4's path normalisation, as the AWS SDKs do it (suite `normalize-path/*`).

    Empty and `.` segments are dropped, `..` drops the segment before it; a leading slash is
    kept, and a trailing one when any segment remains.
    """
    kept: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if kept:
                kept.pop()
        else:
            kept.append(segment)
    lead = "/" if path.startswith("/") else ""
    trail = "/" if kept and path.endswith("/") else ""
    return lead + "/".join(kept) + trail


def _encode_segments(path: str, *, decode_first: bool) -> str:
    return "/".join(
        uri_encode(percent_decode(segment) if decode_first else as_bytes(segment))
        for segment in path.split("/")
    )


def wire_path(path: str, *, s3: bool) -> str:
    """The path as it goes upstream.

    S3: every segment decoded and re-encoded (RFC 3986), which is S3's canonical form, so what
    is sent is exactly what is signed (`%2F` inside a segment stays `%2F`).
    Other services: the app's path, except that characters HTTP does not allow in a path
    (spaces, non-ASCII, ...) are percent-encoded.
    """
    path = path or "/"
    if s3:
        return _encode_segments(path, decode_first=True)
    return _PATH_NOT_ALLOWED.sub(lambda m: uri_encode(as_bytes(m.group())), path)


def canonical_uri(path: str, *, s3: bool) -> str:
    """Step 1. S3: single encoding, no normalisation. Others: normalised, then encoded again."""
    if s3:
        return _encode_segments(path or "/", decode_first=True)
    normalized = remove_dot_segments(wire_path(path, s3=False)) or "/"
    return _encode_segments(normalized, decode_first=False)


# -- query --------------------------------------------------------------------------------------


def parse_query(query: str) -> list[QueryPair]:
    """Split a raw query into decoded pairs (order kept; empty items between `&&` dropped).

    `+` is a space: most HTTP clients form-encode query values (`requests`' `params=`), and the
    query goes out re-encoded as `%20` or `%2B`, so the service reads exactly what was signed.
    """
    pairs: list[QueryPair] = []
    for item in query.replace("+", "%20").split("&"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        pairs.append((percent_decode(key), percent_decode(value) if sep else None))
    return pairs


def wire_query(pairs: Iterable[QueryPair]) -> str:
    """The query to send: the pairs in their order, each part RFC 3986-encoded."""
    return "&".join(
        uri_encode(key) if value is None else f"{uri_encode(key)}={uri_encode(value)}"
        for key, value in pairs
    )


def canonical_query(pairs: Iterable[QueryPair]) -> str:
    """Step 2: encoded `key=value` pairs sorted by encoded key, then value; `k` gives `k=`."""
    encoded = sorted((uri_encode(key), uri_encode(value or b"")) for key, value in pairs)
    return "&".join(f"{key}={value}" for key, value in encoded)


# -- headers ------------------------------------------------------------------------------------


def is_never_signed(name: str) -> bool:
    name = name.lower()
    return name in NEVER_SIGNED or name.startswith(NEVER_SIGNED_PREFIXES)


def select_headers(
    headers: CIMultiDictProxy[str], extra: frozenset[str] = frozenset()
) -> list[tuple[str, str]]:
    """The (lower-cased name, value) pairs to sign, in request order.

    `host`, `x-amz-*`, `content-type`, `content-md5` and the names in `extra`; never a header in
    `NEVER_SIGNED` nor one the `Connection` header declares hop-by-hop.
    """
    hop_by_hop = connection_tokens(headers)
    chosen: list[tuple[str, str]] = []
    for name, value in headers.items():
        lname = name.lower()
        if lname in hop_by_hop or is_never_signed(lname):
            continue
        if (
            lname in DEFAULT_SIGNED_HEADERS
            or lname.startswith(SIGNED_HEADER_PREFIX)
            or lname in extra
        ):
            chosen.append((lname, value))
    return chosen


def canonical_header_value(value: str) -> str:
    """Trimmed, with each run of spaces and tabs inside collapsed to one space."""
    return _HEADER_WHITESPACE.sub(" ", value.strip(" \t"))


def canonical_headers(headers: Sequence[tuple[str, str]]) -> str:
    """Step 3: `name:value` lines sorted by lower-case name; repeated names joined with `,`."""
    grouped: dict[str, list[str]] = {}
    for name, value in headers:
        grouped.setdefault(name.lower(), []).append(canonical_header_value(value))
    return "\n".join(f"{name}:{','.join(grouped[name])}" for name in sorted(grouped))


def signed_headers(headers: Sequence[tuple[str, str]]) -> str:
    """Step 4: the sorted, `;`-separated lower-case names."""
    return ";".join(sorted({name.lower() for name, _ in headers}))


# -- payload, request, signature ----------------------------------------------------------------


def payload_hash(body: bytes | None, *, unsigned: bool) -> str:
    """Step 5: hex SHA-256 of the body, or `UNSIGNED-PAYLOAD`."""
    if unsigned:
        return UNSIGNED_PAYLOAD
    if body is None:
        raise RuntimeError("aws-sigv4 with payload: signed needs the request body before signing")
    return hashlib.sha256(body).hexdigest()


def canonical_request(
    method: str,
    uri: str,
    query: str,
    *,
    headers: str,
    signed: str,
    payload: str,
) -> str:
    """Step 6: the six parts joined by newlines (the headers block is followed by a blank line)."""
    return "\n".join((method, uri, query, headers, "", signed, payload))


def credential_scope(date_stamp: str, region: str, service: str) -> str:
    return f"{date_stamp}/{region}/{service}/{SCOPE_TERMINATOR}"


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    """Step 7: algorithm, time, scope and the hex SHA-256 of the canonical request."""
    digest = hashlib.sha256(as_bytes(canonical)).hexdigest()
    return "\n".join((ALGORITHM, amz_date, scope, digest))


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret: str, date_stamp: str, region: str, service: str) -> bytes:
    """Step 8: HMAC chain over date, region, service and the terminator, keyed by `AWS4`+secret."""
    key = _hmac(f"{KEY_PREFIX}{secret}".encode(), date_stamp)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, SCOPE_TERMINATOR)


def signature(key: bytes, to_sign: str) -> str:
    """Step 9: lower-case hex HMAC-SHA256 of the string to sign."""
    return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def authorization(access_key_id: str, scope: str, signed: str, sig: str) -> str:
    return (
        f"{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={signed}, Signature={sig}"
    )


def amz_date(now_seconds: int) -> str:
    return time.strftime(AMZ_DATE_FORMAT, time.gmtime(now_seconds))
