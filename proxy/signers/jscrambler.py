"""`jscrambler`: Jscrambler API v3 HMAC (docs/schemes.md#jscrambler).

The credentials travel as request parameters beside the app's own, and the signature covers
every parameter. So the signer decodes the app's parameters exactly as the vendor's Node server
will (`querystring.parse`, or the multipart form), adds `access_key` and `timestamp`, signs, and
re-encodes: the query string for body-less methods, the whole form body for POST/PUT/PATCH.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import HTTP
from typing import Final, Literal
from urllib.parse import quote, unquote_plus

from pydantic import field_validator

from proxy.secrets import SecretValue
from proxy.signers.base import (
    InvalidBody,
    Signer,
    SignerConfig,
    SigningContext,
    SignResult,
    UnsupportedMediaType,
    UpstreamRequest,
)

# An app that sends its own copy would get a stale value signed (lodash.defaults keeps it).
_AUTH_PARAMS: Final = frozenset({"access_key", "timestamp", "signature"})
# The vendor client sends a form body for every method but GET and DELETE; of the rest only
# these carry a body, so HEAD, OPTIONS and friends keep their parameters in the query.
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
_URLENCODED: Final = "application/x-www-form-urlencoded"
_MULTIPART: Final = "multipart/form-data"
_HEADER_PARSER: Final = BytesHeaderParser(policy=HTTP)


class JscramblerConfig(SignerConfig):
    """A route's `signer:` block for `scheme: jscrambler` (Jscrambler API v3 HMAC)."""

    scheme: Literal["jscrambler"]
    access_key: SecretValue
    secret_key: SecretValue
    # The client requests /v3/code.json but signs /code.json; "" signs the path as sent.
    version_prefix: str = "/v3"

    @field_validator("version_prefix")
    @classmethod
    def _valid_prefix(cls, prefix: str) -> str:
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ValueError("version_prefix must be empty or look like /v3 (no trailing /)")
        return prefix


@dataclass(frozen=True, slots=True)
class _FilePart:
    """A multipart file part, kept as the app sent it: header block and content bytes."""

    name: str
    raw_headers: bytes
    content: bytes


class JscramblerSigner(Signer[JscramblerConfig]):
    public_fields = frozenset({"access_key"})  # sent in clear as a parameter

    def __init__(self, config: JscramblerConfig) -> None:
        self._access_key: Final = config.access_key.reveal()
        # The vendor upper-cases the secret before using it as the HMAC key.
        self._key: Final = config.secret_key.reveal().upper().encode()
        self._prefix: Final = config.version_prefix

    def needs_body(self, method: str) -> bool:
        return method.upper() in _BODY_METHODS

    def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        if request.method.upper() in _BODY_METHODS:
            return self._sign_form(request, ctx)
        params = _fold(_parse_querystring(request.query))
        signed, string_to_sign = self._signed_params(request, params, ctx)
        return SignResult(request.replace(query=_urlencode(signed)), string_to_sign)

    def _sign_form(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        if request.body is None:
            raise RuntimeError(f"jscrambler needs the buffered body to sign a {request.method}")
        multipart, params, files = _read_form(request, request.body)
        md5s = {part.name: hashlib.md5(part.content).hexdigest() for part in files}  # noqa: S324
        signed, string_to_sign = self._signed_params(request, params, ctx, md5s)
        if multipart:
            body, content_type = _multipart_body(signed, files, ctx.nonce)
        else:
            body, content_type = _urlencode(signed).encode("ascii"), _URLENCODED
        # The query is not part of a form request's signature; only stale credentials go.
        query = "&".join(s for s in request.query.split("&") if _segment_key(s) not in _AUTH_PARAMS)
        signed_request = request.replace(body=body, query=query)
        return SignResult(
            signed_request.with_headers({"Content-Type": content_type}), string_to_sign
        )

    def _signed_params(
        self,
        request: UpstreamRequest,
        params: dict[str, str],
        ctx: SigningContext,
        md5s: dict[str, str] | None = None,
    ) -> tuple[dict[str, str], str]:
        """The outgoing parameters (app's, then access_key, timestamp, signature) and the data."""
        params = {k: v for k, v in params.items() if k not in _AUTH_PARAMS}
        params |= {"access_key": self._access_key, "timestamp": _iso_timestamp(ctx.now_ms)}
        to_sign = params | (md5s or {})
        query = "&".join(f"{_enc(k)}={_enc(to_sign[k])}" for k in sorted(to_sign, key=_utf16))
        path = self._signed_path(request.path)
        data = f"{request.method.upper()};{request.hostname.lower()};{path};{query}"
        digest = hmac.new(self._key, data.encode(), hashlib.sha256).digest()
        return params | {"signature": base64.b64encode(digest).decode("ascii")}, data

    def _signed_path(self, path: str) -> str:
        prefix = self._prefix
        if not prefix or not (path == prefix or path.startswith(prefix + "/")):
            return path
        # A mounted router sees "/" for the bare prefix.
        return path[len(prefix) :] or "/"

    def __repr__(self) -> str:
        return (
            "JscramblerSigner(access_key=**********, secret_key=**********,"
            f" version_prefix={self._prefix!r})"
        )


def _enc(text: str) -> str:
    # encodeURIComponent plus the vendor's !'()* escapes = RFC 3986: only A-Za-z0-9-_.~ stay.
    return quote(text, safe="")


def _utf16(key: str) -> bytes:
    # JS sorts strings by UTF-16 code units; big-endian bytes compare the same way.
    return key.encode("utf-16-be", "surrogatepass")


def _iso_timestamp(now_ms: int) -> str:
    """JS `Date.prototype.toISOString()`: UTC, milliseconds, `Z`."""
    seconds = datetime.fromtimestamp(now_ms // 1000, tz=UTC)
    return f"{seconds:%Y-%m-%dT%H:%M:%S}.{now_ms % 1000:03d}Z"


def _urlencode(params: dict[str, str]) -> str:
    return "&".join(f"{_enc(k)}={_enc(v)}" for k, v in params.items())


def _parse_querystring(raw: str) -> list[tuple[str, str]]:
    """Node's `querystring.parse`: `+` is a space, bad UTF-8 is U+FFFD, `k` means `k=`."""
    pairs = []
    for segment in raw.split("&"):
        if segment:  # Node skips empty segments, but keeps `=` as the empty key
            key, _, value = segment.partition("=")
            pairs.append(
                (unquote_plus(key, errors="replace"), unquote_plus(value, errors="replace"))
            )
    return pairs


def _segment_key(segment: str) -> str:
    return unquote_plus(segment.partition("=")[0], errors="replace")


def _fold(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Repeated keys become one comma-joined value, as the client joins arrays."""
    values: dict[str, list[str]] = {}
    for key, value in pairs:
        values.setdefault(key, []).append(value)
    return {key: ",".join(vals) for key, vals in values.items()}


def _read_form(
    request: UpstreamRequest, body: bytes
) -> tuple[bool, dict[str, str], list[_FilePart]]:
    """(whether the form is multipart, its fields, its file parts)."""
    raw_type = request.headers.get("Content-Type", "")
    message = EmailMessage()
    message["Content-Type"] = raw_type
    content_type, boundary = message.get_content_type(), message.get_boundary()
    if not body:  # nothing to read, whatever the type says; send the usual form back
        return bool(raw_type) and content_type == _MULTIPART, {}, []
    if raw_type and content_type == _URLENCODED:
        return False, _fold(_parse_querystring(body.decode("utf-8", "replace"))), []
    if raw_type and content_type == _MULTIPART:
        if not boundary or not boundary.isascii():
            raise InvalidBody("jscrambler: the multipart body has no valid boundary parameter")
        return True, *_parse_multipart(body, boundary.encode("ascii"))
    raise UnsupportedMediaType(
        f"jscrambler {request.method} bodies must be form-urlencoded or multipart"
        f" (Content-Type: {raw_type[:100] or 'none'})"
    )


def _parse_multipart(body: bytes, boundary: bytes) -> tuple[dict[str, str], list[_FilePart]]:
    """Split a form into fields (folded like a query) and file parts (any part with a filename).

    The stdlib parses each part's headers (quoting, RFC 2231, UTF-8 names); `_split_parts` finds
    the parts, because the `email` parser is line-based and costs ~50 ms per MiB of binary
    upload, on the event loop.
    """
    fields: list[tuple[str, str]] = []
    files: list[_FilePart] = []
    for raw_headers, content in _split_parts(body, boundary):
        headers = _HEADER_PARSER.parsebytes(raw_headers + b"\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        if headers.get_content_disposition() != "form-data" or not isinstance(name, str):
            raise InvalidBody("malformed multipart body: a part has no form-data name")
        if headers.get_param("filename", header="content-disposition") is not None:
            files.append(_FilePart(name, raw_headers, content))
        else:
            fields.append((name, _decode(content, headers.get_content_charset())))
    params = _fold(fields)
    names = [part.name for part in files if part.name not in _AUTH_PARAMS]
    if len(set(names)) != len(names) or not params.keys().isdisjoint(names):
        raise InvalidBody("multipart file parts must have unique names, apart from the fields")
    return params, [part for part in files if part.name not in _AUTH_PARAMS]


def _split_parts(body: bytes, boundary: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(header block, content) of each part, cut at the RFC 2046 delimiter CRLF--boundary."""
    data = b"\r\n" + body  # so a delimiter on the first line needs no special case
    delimiter = b"\r\n--" + boundary
    position = data.find(delimiter)
    while position >= 0:
        start = position + len(delimiter)
        if data.startswith(b"--", start):
            return  # the close delimiter; what follows is the epilogue
        position = data.find(delimiter, start)
        # After the delimiter: transport padding, CRLF, headers, an empty line, the content.
        eol = data.find(b"\r\n", start, position)
        blank = data.find(b"\r\n\r\n", eol, position)
        if position < 0 or eol < 0 or blank < 0 or data[start:eol].strip(b" \t"):
            break
        yield data[eol + 2 : blank], data[blank + 4 : position]
    raise InvalidBody("malformed multipart body: a part or the closing boundary is missing")


def _decode(content: bytes, charset: str | None) -> str:
    try:
        return content.decode(charset or "utf-8", "replace")
    except LookupError:  # an unknown charset label: read it as the default, UTF-8
        return content.decode("utf-8", "replace")


def _multipart_body(
    params: dict[str, str], files: list[_FilePart], nonce: str
) -> tuple[bytes, str]:
    """A fresh form: every parameter as a field, then the files byte for byte."""
    contents = [value.encode() for value in params.values()] + [part.content for part in files]
    for attempt in range(100):
        # Derived from the per-request nonce, so a signature is reproducible in tests.
        seed = hashlib.sha256(f"{nonce}:{attempt}".encode()).hexdigest()[:32]
        boundary = f"signing-proxy-{seed}".encode("ascii")
        if not any(b"--" + boundary in content for content in contents):
            break
    else:  # pragma: no cover - needs a sha256 collision with the upload
        raise ValueError("no multipart boundary found that is absent from the body")
    out = []
    for name, value in params.items():
        out += [b"--", boundary, b"\r\nContent-Disposition: form-data; name=", _quoted(name)]
        out += [b"\r\n\r\n", value.encode(), b"\r\n"]
    for part in files:
        out += [b"--", boundary, b"\r\n", part.raw_headers, b"\r\n\r\n", part.content, b"\r\n"]
    out += [b"--", boundary, b"--\r\n"]
    return b"".join(out), f"{_MULTIPART}; boundary={boundary.decode('ascii')}"


def _quoted(name: str) -> bytes:
    """An RFC 7578 quoted name: raw UTF-8, as browsers and Node's form-data send it."""
    if "\r" in name or "\n" in name:
        raise InvalidBody("multipart field names must not contain line breaks")
    return b'"' + name.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'
