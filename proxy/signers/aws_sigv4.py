"""`aws-sigv4`: AWS Signature Version 4 (SIGNING.md section (e)), written from the AWS spec.

The signature is built by small pure steps, one function each, in the order AWS describes them:
`canonical_uri`, `canonical_query`, `canonical_headers`, `signed_headers`, `payload_hash`,
`canonical_request`, `string_to_sign`, `signing_key`, `signature` (plus `credential_scope`
and `authorization`). `AwsSigV4Signer.sign()` chains them; all state it uses is local to the
call, and the credentials come as one frozen snapshot from the route's `CredentialSource`
(`aws_credentials.py`, the only place botocore is used).

What the proxy sends and signs:

- Incoming `Authorization`, `X-Amz-Date`, `X-Amz-Security-Token` and `X-Amz-Content-Sha256`
  headers, and presigned-URL `X-Amz-*` auth parameters in the query, are removed first.
- Signed headers: `host`, every `x-amz-*`, `content-type`, `content-md5`, plus the names in
  `signed_headers`; never hop-by-hop or tracing headers (`NEVER_SIGNED`).
- `Host` is set to the signed value: `sign_host`, or the host dialled without a default port.
- The query goes out re-encoded exactly as it is canonicalised (RFC 3986, order kept), so the
  service cannot read it differently from the signature. A raw `+` in the app's query is a
  space, as form encoders (and Envoy's signer) mean it; a literal plus arrives as `%2B`.
- Non-S3 services: the path is sent as received and signed normalised (dot segments and empty
  segments removed) and encoded once more (`%20` -> `%2520`).
  S3 (`S3_SERVICES`): no normalisation, single encoding; the path goes out in that encoding, and
  `X-Amz-Content-Sha256` is always sent.
- `payload: signed` hashes the body (so the proxy reads it first); `payload: unsigned` signs
  `UNSIGNED-PAYLOAD`, sends it as `X-Amz-Content-Sha256` and lets the body stream.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Literal

from multidict import CIMultiDictProxy
from pydantic import Field, field_validator, model_validator

from proxy.secrets import Secret, SecretValue
from proxy.signers import aws_credentials
from proxy.signers.aws_credentials import (
    INSTALL_HINT,
    STS_SESSION_NAME_MAX,
    AwsCredentials,
    CredentialSource,
    CredentialsUnavailableError,
    OnRefresh,
    build_credential_source,
    sts_session_name,
)
from proxy.signers.base import (
    BodyDigest,
    OnCredentialRefresh,
    Signer,
    SignerConfig,
    SigningContext,
    SignResult,
    UpstreamRequest,
)

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
NEVER_SIGNED: Final = frozenset(
    {
        "authorization",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
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

_MASK: Final = "**********"
_HEADER_NAME: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token
_SCOPE_PART: Final = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_ROLE_ARN: Final = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
_EXTERNAL_ID: Final = re.compile(r"^[\w+=,.@:/-]{2,1224}$")
_SIGN_HOST: Final = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")
_PATH_NOT_ALLOWED: Final = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/%]+")
_HEADER_WHITESPACE: Final = re.compile(r"[ \t]+")
_DEFAULT_PORTS: Final = {"https": "443", "http": "80"}

QueryPair = tuple[bytes, bytes | None]
"""A decoded query parameter; the value is None when the parameter had no `=`."""


# -- encoding helpers ---------------------------------------------------------------------------


def _bytes(text: str) -> bytes:
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
    data = _bytes(text)
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
        uri_encode(percent_decode(segment) if decode_first else _bytes(segment))
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
    return _PATH_NOT_ALLOWED.sub(lambda m: uri_encode(_bytes(m.group())), path)


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
    hop_by_hop = {
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
    }
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
    digest = hashlib.sha256(_bytes(canonical)).hexdigest()
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


def host_to_sign(scheme: str, host: str) -> str:
    """The dialled `host[:port]` without the scheme's default port (what clients send as Host)."""
    default = _DEFAULT_PORTS.get(scheme.lower())
    if default and host.endswith(f":{default}"):
        return host[: -len(default) - 1]
    return host


# -- service and region from the upstream host --------------------------------------------------

_AWS_DOMAINS: Final = (".amazonaws.com", ".amazonaws.com.cn")
_REGION: Final = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$")
# Global endpoints without a region label, signed for us-east-1.
_GLOBAL_ENDPOINTS: Final = {
    "iam": "iam",
    "sts": "sts",
    "route53": "route53",
    "cloudfront": "cloudfront",
    "organizations": "organizations",
    "s3": "s3",
    "s3-external-1": "s3",
    "queue": "sqs",
    "sdb": "sdb",
}
_GLOBAL_REGION: Final = "us-east-1"
# Endpoint prefixes whose signing name differs.
_SIGNING_NAMES: Final = {
    "email": "ses",
    "bedrock-runtime": "bedrock",
    "bedrock-agent": "bedrock",
    "bedrock-agent-runtime": "bedrock",
    "aps-workspaces": "aps",
    "s3-accesspoint": "s3",
    "s3-control": "s3",
}
_NOT_A_SERVICE: Final = frozenset({"dualstack"})


def detect_service_region(host: str) -> tuple[str, str]:
    """(service, region) from a standard AWS endpoint host (`detect: true`).

    Understood: `<service>.<region>.amazonaws.com` (with any labels before it, e.g. an API id
    or an S3 bucket; `-fips` and `dualstack` variants), `<name>.<region>.<service>.amazonaws.com`
    (OpenSearch `es`, `aoss`), S3's legacy `s3-<region>` forms, the global endpoints (`iam`,
    `sts`, `route53`, `cloudfront`, `s3`, ... signed for us-east-1) and `.amazonaws.com.cn`.
    Raises ValueError for any other host (set `service` and `region` explicitly then).
    """
    name = host.strip().lower().rstrip(".")
    if name.startswith("["):
        raise ValueError(f"cannot derive an AWS service and region from {host!r}")
    name = name.rsplit(":", 1)[0] if ":" in name else name
    domain = next((d for d in _AWS_DOMAINS if name.endswith(d)), None)
    labels = name[: -len(domain)].split(".") if domain else []
    if not domain or not all(labels):
        raise ValueError(
            f"cannot derive an AWS service and region from {host!r}: not a standard "
            "*.amazonaws.com endpoint; set service and region explicitly"
        )
    found = _detect(labels)
    if found is None:
        raise ValueError(
            f"cannot derive an AWS service and region from {host!r}; "
            "set service and region explicitly"
        )
    return found


def _signing_name(label: str) -> str:
    label = label.removesuffix("-fips")
    return _SIGNING_NAMES.get(label, label)


def _detect(labels: list[str]) -> tuple[str, str] | None:
    last = labels[-1]
    # <service>.<region>  (also <bucket>.s3.<region>, s3.dualstack.<region>, <api>.execute-api...)
    if _REGION.match(last):
        service_labels = [label for label in labels[:-1] if label not in _NOT_A_SERVICE]
        if not service_labels:
            return None
        return _signing_name(service_labels[-1]), last
    # <name>.<region>.<service>  (OpenSearch: search-x.eu-west-1.es, coll.us-east-1.aoss)
    if len(labels) >= 2 and _REGION.match(labels[-2]):
        return _signing_name(last), labels[-2]
    # S3 legacy: s3-<region>, <bucket>.s3-<region>
    if last.startswith("s3-") and _REGION.match(last[3:]):
        return "s3", last[3:]
    if last in _GLOBAL_ENDPOINTS:
        return _GLOBAL_ENDPOINTS[last], _GLOBAL_REGION
    return None


# -- config -------------------------------------------------------------------------------------


class AwsSigV4Config(SignerConfig):
    """A route's `signer:` block for `scheme: aws-sigv4`.

    `service` and `region` are required unless `detect: true`, which derives the missing ones
    from the route's upstream host (or `sign_host`). A model validator cannot see the route, so
    the core resolves detection when it validates the route: `config.with_upstream_host(host)`
    (or `detect_service_region(host)` directly); the signer refuses a config left unresolved.
    """

    scheme: Literal["aws-sigv4"]
    service: str | None = None
    region: str | None = None
    detect: bool = False
    access_key_id: SecretValue | None = None
    secret_access_key: SecretValue | None = None
    session_token: SecretValue | None = None
    role_arn: str | None = None
    session_name: str | None = None
    external_id: str | None = None
    sign_host: str | None = None
    payload: Literal["signed", "unsigned"] = "signed"
    signed_headers: tuple[str, ...] = ()
    presign_expires: int | None = Field(default=None, ge=1, le=PRESIGN_MAX_EXPIRES)

    @field_validator("service", "region")
    @classmethod
    def _valid_scope_part(cls, value: str | None) -> str | None:
        if value is not None and not _SCOPE_PART.match(value):
            raise ValueError(
                f"{value!r} is not a valid AWS signing name or region "
                "(lower-case letters, digits, '-', '.', '_')"
            )
        return value

    @field_validator("role_arn")
    @classmethod
    def _valid_role_arn(cls, value: str | None) -> str | None:
        if value is not None and not _ROLE_ARN.match(value):
            raise ValueError(
                f"{value!r} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"
            )
        return value

    @field_validator("session_name")
    @classmethod
    def _valid_session_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value[:STS_SESSION_NAME_MAX]
        if len(value) < 2 or sts_session_name(value) != value:
            raise ValueError("session_name must be 2-64 characters from A-Z a-z 0-9 _ + = , . @ -")
        return value

    @field_validator("external_id")
    @classmethod
    def _valid_external_id(cls, value: str | None) -> str | None:
        if value is not None and not _EXTERNAL_ID.match(value):
            raise ValueError(
                "external_id must be 2-1224 characters from A-Z a-z 0-9 _ + = , . @ : / -"
            )
        return value

    @field_validator("sign_host")
    @classmethod
    def _valid_sign_host(cls, value: str | None) -> str | None:
        if value is not None and not _SIGN_HOST.match(value):
            raise ValueError(f"sign_host must be host[:port] (no scheme or path); got {value!r}")
        return value

    @field_validator("signed_headers")
    @classmethod
    def _valid_signed_headers(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        out: list[str] = []
        for name in names:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            lname = name.lower()
            if is_never_signed(lname):
                raise ValueError(
                    f"{name} cannot be signed: hop-by-hop, tracing and Authorization headers "
                    "change in transit or carry the signature"
                )
            if lname not in out:
                out.append(lname)
        return tuple(out)

    @model_validator(mode="after")
    def _consistent(self) -> AwsSigV4Config:
        if not self.detect and (self.service is None or self.region is None):
            raise ValueError(
                "aws-sigv4 needs service and region (or detect: true to derive them from a "
                "standard *.amazonaws.com upstream host)"
            )
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key must be given together")
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("session_token needs access_key_id and secret_access_key")
        if self.role_arn is None and (self.session_name is not None or self.external_id):
            raise ValueError("session_name and external_id only apply with role_arn")
        needs_botocore = self.role_arn is not None or self.access_key_id is None
        if needs_botocore and not aws_credentials.botocore_available():
            needs = (
                "role_arn (an STS call)"
                if self.role_arn is not None
                else "no static access_key_id/secret_access_key (the default credential chain)"
            )
            raise ValueError(
                f"aws-sigv4 with {needs} needs botocore, which is not installed: {INSTALL_HINT}"
            )
        return self

    @property
    def is_s3(self) -> bool:
        return self.service in S3_SERVICES

    def with_upstream_host(self, host: str) -> AwsSigV4Config:
        """This config with `detect: true` resolved against the route's upstream host.

        Uses `sign_host` when set (the host AWS sees). Explicit `service`/`region` win over
        detection; raises ValueError (a config error) when detection is needed and fails.
        """
        if not self.detect or (self.service is not None and self.region is not None):
            return self
        service, region = detect_service_region(self.sign_host or host)
        return self.model_copy(
            update={"service": self.service or service, "region": self.region or region}
        )


# -- signer -------------------------------------------------------------------------------------


class AwsSigV4Signer(Signer):
    """Signs one route's requests with SigV4 (Authorization header, or presigned query)."""

    scheme = "aws-sigv4"
    config_model = AwsSigV4Config
    requires_request_body = True  # per config: see needs_body()
    public_fields = frozenset({"access_key_id"})  # sent in clear in Credential=

    def __init__(
        self,
        config: AwsSigV4Config,
        *,
        route: str = "",
        on_refresh: OnRefresh | None = None,
        upstream_host: str | None = None,
        credential_source: CredentialSource | None = None,
    ) -> None:
        if upstream_host is not None:
            config = config.with_upstream_host(upstream_host)
        if config.service is None or config.region is None:
            raise ValueError(
                "aws-sigv4 with detect: true needs the route's upstream host: build the signer "
                "with upstream_host=... or from config.with_upstream_host(host)"
            )
        self.config = config
        self.service: str = config.service
        self.region: str = config.region
        self._s3 = config.is_s3
        self._presign = config.presign_expires
        s3_presign = self._s3 and self._presign is not None
        # S3 presigned URLs never carry a payload hash; otherwise `payload` decides.
        self._unsigned_payload = config.payload == "unsigned" or s3_presign
        self._send_content_sha256 = not s3_presign and (self._s3 or config.payload == "unsigned")
        self._extra_signed = frozenset(config.signed_headers)
        self._sign_host = config.sign_host
        if credential_source is None:
            credential_source = build_credential_source(
                access_key_id=_reveal(config.access_key_id),
                secret_access_key=_reveal(config.secret_access_key),
                session_token=_reveal(config.session_token),
                role_arn=config.role_arn,
                session_name=config.session_name
                or sts_session_name(f"signing-proxy-{route}" if route else "signing-proxy"),
                external_id=config.external_id,
                region=config.region,
                route=route,
                on_refresh=on_refresh,
            )
        self.credentials = credential_source

    @classmethod
    def create(
        cls, config: SignerConfig, *, route: str, on_refresh: OnCredentialRefresh | None
    ) -> Signer:
        assert isinstance(config, AwsSigV4Config)
        return cls(config, route=route, on_refresh=on_refresh)

    def needs_body(self, method: str) -> bool:
        return not self._unsigned_payload

    def new_body_digest(self) -> BodyDigest:
        return hashlib.sha256()

    def is_ready(self) -> bool:
        return self.credentials.is_ready()

    async def start(self) -> None:
        await self.credentials.start()

    async def close(self) -> None:
        await self.credentials.close()

    def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        """Sign with the current credential snapshot.

        Raises `CredentialsUnavailableError` when there are no valid credentials (yet).
        """
        creds = self.credentials.current()
        return sign_request(
            request,
            creds,
            amz_date=amz_date(ctx.now_seconds),
            region=self.region,
            service=self.service,
            s3=self._s3,
            unsigned_payload=self._unsigned_payload,
            send_content_sha256=self._send_content_sha256,
            extra_signed=self._extra_signed,
            sign_host=self._sign_host,
            presign_expires=self._presign,
        )

    def __repr__(self) -> str:
        return (
            f"AwsSigV4Signer(service={self.service!r}, region={self.region!r}, "
            f"credentials={self.credentials!r})"
        )


def _reveal(secret: Secret | None) -> str | None:
    return None if secret is None else secret.reveal()


def sign_request(
    request: UpstreamRequest,
    creds: AwsCredentials,
    *,
    amz_date: str,
    region: str,
    service: str,
    s3: bool,
    unsigned_payload: bool,
    send_content_sha256: bool,
    extra_signed: frozenset[str] = frozenset(),
    sign_host: str | None = None,
    presign_expires: int | None = None,
) -> SignResult:
    """The whole signature for one request; pure (everything arrives as arguments)."""
    date_stamp = amz_date[:8]
    scope = credential_scope(date_stamp, region, service)
    token = creds.session_token

    path = wire_path(request.path, s3=s3)
    pairs = [
        pair
        for pair in parse_query(request.query)
        if pair[0].lower() not in INCOMING_AUTH_QUERY_PARAMS
    ]
    if request.body_digest is not None and not unsigned_payload:
        payload = request.body_digest.copy().hexdigest()  # a large body, hashed as it arrived
    else:
        payload = payload_hash(request.body, unsigned=unsigned_payload)

    added: list[tuple[str, str]] = [
        (HEADER_HOST, sign_host or host_to_sign(request.scheme, request.host))
    ]
    if presign_expires is None:
        added.append((HEADER_DATE, amz_date))
        if token:
            added.append((HEADER_SECURITY_TOKEN, token))
    if send_content_sha256:
        added.append((HEADER_CONTENT_SHA256, payload))
    prepared = request.with_headers(added, remove=INCOMING_AUTH_HEADERS)
    to_sign = select_headers(prepared.headers, extra_signed)
    signed = signed_headers(to_sign)

    query_pairs = pairs
    if presign_expires is not None:
        auth_params = [
            (QUERY_ALGORITHM, ALGORITHM),
            (QUERY_CREDENTIAL, f"{creds.access_key_id}/{scope}"),
            (QUERY_DATE, amz_date),
            (QUERY_EXPIRES, str(presign_expires)),
            (QUERY_SIGNED_HEADERS, signed),
        ]
        if token:
            auth_params.append((QUERY_SECURITY_TOKEN, token))
        query_pairs = pairs + [(_bytes(k), _bytes(v)) for k, v in auth_params]

    canonical = canonical_request(
        request.method,
        canonical_uri(path, s3=s3),
        canonical_query(query_pairs),
        headers=canonical_headers(to_sign),
        signed=signed,
        payload=payload,
    )
    to_sign_text = string_to_sign(amz_date, scope, canonical)
    sig = signature(signing_key(creds.secret_access_key, date_stamp, region, service), to_sign_text)

    if presign_expires is not None:
        query = wire_query([*query_pairs, (_bytes(QUERY_SIGNATURE), _bytes(sig))])
        signed_request = prepared.replace(path=path, query=query)
    else:
        signed_request = prepared.replace(path=path, query=wire_query(pairs)).with_headers(
            {HEADER_AUTHORIZATION: authorization(creds.access_key_id, scope, signed, sig)}
        )
    return SignResult(
        request=signed_request,
        string_to_sign=to_sign_text,
        details=_details(canonical, signed, scope, token),
    )


def _details(canonical: str, signed: str, scope: str, token: str | None) -> Mapping[str, str]:
    # The session token is a credential: it appears in the canonical request (header or query
    # form) but never in what `signing-proxy sign` prints.
    if token:
        canonical = canonical.replace(token, _MASK).replace(uri_encode(_bytes(token)), _MASK)
    return {"canonical_request": canonical, "signed_headers": signed, "credential_scope": scope}


__all__ = [
    "AwsSigV4Config",
    "AwsSigV4Signer",
    "CredentialsUnavailableError",
    "detect_service_region",
    "sign_request",
]
