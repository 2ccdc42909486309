"""`aws-sigv4`: AWS Signature Version 4, written from the AWS spec
(docs/schemes.md#aws-signature-version-4).

The canonical form is built by small pure steps in `aws_canonical.py`, one function each;
`AwsSigV4Signer.sign()` chains them. All state it uses is local to the call, and the
credentials come as one frozen snapshot from the route's `CredentialSource`
(`aws_credentials.py`, the only place botocore is used). `detect: true` reads the service and
region from the upstream host (`aws_endpoints.py`).

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
import re
from collections.abc import Mapping
from typing import Final, Literal

from pydantic import Field, field_validator, model_validator

from proxy.http import host_to_sign, is_field_name
from proxy.secrets import HeaderSecretValue, Secret, SecretValue
from proxy.signers import aws_credentials
from proxy.signers.aws_canonical import (
    ALGORITHM,
    HEADER_AUTHORIZATION,
    HEADER_CONTENT_SHA256,
    HEADER_DATE,
    HEADER_HOST,
    HEADER_SECURITY_TOKEN,
    INCOMING_AUTH_HEADERS,
    INCOMING_AUTH_QUERY_PARAMS,
    PRESIGN_MAX_EXPIRES,
    QUERY_ALGORITHM,
    QUERY_CREDENTIAL,
    QUERY_DATE,
    QUERY_EXPIRES,
    QUERY_SECURITY_TOKEN,
    QUERY_SIGNATURE,
    QUERY_SIGNED_HEADERS,
    S3_SERVICES,
    amz_date,
    as_bytes,
    authorization,
    canonical_headers,
    canonical_query,
    canonical_request,
    canonical_uri,
    credential_scope,
    is_never_signed,
    parse_query,
    payload_hash,
    select_headers,
    signature,
    signed_headers,
    signing_key,
    string_to_sign,
    uri_encode,
    wire_path,
    wire_query,
)
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
from proxy.signers.aws_endpoints import detect_service_region
from proxy.signers.base import (
    BodyDigest,
    OnCredentialRefresh,
    Signer,
    SignerConfig,
    SigningContext,
    SignResult,
    UpstreamRequest,
)

_MASK: Final = "**********"
_SCOPE_PART: Final = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_ROLE_ARN: Final = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
_EXTERNAL_ID: Final = re.compile(r"^[\w+=,.@:/-]{2,1224}$")
_SIGN_HOST: Final = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")


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
    # In the Authorization and X-Amz-Security-Token headers (or, presigning, the query).
    access_key_id: HeaderSecretValue | None = None
    secret_access_key: SecretValue | None = None
    session_token: HeaderSecretValue | None = None
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
            if not is_field_name(name):
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


class AwsSigV4Signer(Signer[AwsSigV4Config]):
    """Signs one route's requests with SigV4 (Authorization header, or presigned query)."""

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
        cls, config: AwsSigV4Config, *, route: str, on_refresh: OnCredentialRefresh | None
    ) -> AwsSigV4Signer:
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
        query_pairs = pairs + [(as_bytes(k), as_bytes(v)) for k, v in auth_params]

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
        query = wire_query([*query_pairs, (as_bytes(QUERY_SIGNATURE), as_bytes(sig))])
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
        canonical = canonical.replace(token, _MASK).replace(uri_encode(as_bytes(token)), _MASK)
    return {"canonical_request": canonical, "signed_headers": signed, "credential_scope": scope}


__all__ = [
    "AwsSigV4Config",
    "AwsSigV4Signer",
    "CredentialsUnavailableError",
    "detect_service_region",
    "sign_request",
]
