"""`http-signatures-cavage`: the `Signature` of draft-cavage-http-signatures-12, as Oracle Cloud
Infrastructure (OCI) and ActivityPub servers still require it.

The signing string is one `name: value` line per signed header, in the configured order, joined
by newlines; the signature is base64 of RSASSA-PKCS1-v1_5 SHA-256 (`rsa-sha256`) or HMAC-SHA256
(`hmac-sha256`) over it. What the proxy computes itself:

- `(request-target)`: the lower-case method, a space, the path and query as sent.
- `date`: the signing time (IMF-fixdate). The app's own `Date` is kept only when it names the
  same time within `DATE_TOLERANCE_SECONDS` (so a client's exact bytes survive); a stale or
  unparsable one is replaced, so a retry minutes later is signed with a fresh date.
- `x-content-sha256` (OCI) and `digest` (`SHA-256=...`, ActivityPub): base64 SHA-256 of the body
  sent, hashed as it arrives (a large body spools to disk), replacing the app's.
- `host` and `content-length` are the values the proxy sends; any other header is the app's.

Profiles fix the defaults: `oci` (`Authorization: Signature version="1",...`; `date
(request-target) host`, plus `content-length content-type x-content-sha256` on POST, PUT and
PATCH, as OCI's documentation signs them) and `activitypub` (a `Signature:` header;
`(request-target) host date`, plus `digest` on bodies). A header to sign that the request lacks is
refused (`MissingComponent`), never signed over nothing.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from typing import Final, Literal

from pydantic import Field, ValidationInfo, field_validator

from proxy.http import is_field_name
from proxy.secrets import HeaderSecretValue, Secret, SecretValue
from proxy.signers.base import (
    BodyDigest,
    Signer,
    SignerConfig,
    SigningContext,
    SignResult,
    UpstreamRequest,
)
from proxy.signers.rfc9421 import UNSIGNABLE_FIELDS, MissingComponent
from proxy.signers.signature_keys import Algorithm, KeyEncoding, SigningKey, load_signing_key

REQUEST_TARGET: Final = "(request-target)"
DATE_TOLERANCE_SECONDS: Final = 5
_COMPUTED_BODY_HEADERS: Final = frozenset({"x-content-sha256", "digest"})
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
_KEY_ALGORITHMS: Final[dict[str, Algorithm]] = {
    "rsa-sha256": "rsa-v1_5-sha256",
    "hmac-sha256": "hmac-sha256",
}
# OCI documents its test values with a 1024-bit key; the draft sets no minimum.
_MIN_RSA_BITS: Final = 1024


@dataclass(frozen=True, slots=True)
class _Profile:
    header: Literal["authorization", "signature"]
    headers: tuple[str, ...]  # signed on every request
    body_headers: tuple[str, ...]  # signed in addition on POST, PUT and PATCH


_PROFILES: Final = {
    "oci": _Profile(
        "authorization",
        ("date", REQUEST_TARGET, "host"),
        ("content-length", "content-type", "x-content-sha256"),
    ),
    "activitypub": _Profile("signature", (REQUEST_TARGET, "host", "date"), ("digest",)),
}
_MASK: Final = "**********"


class CavageConfig(SignerConfig):
    """A route's `signer:` block for `scheme: http-signatures-cavage`."""

    scheme: Literal["http-signatures-cavage"]
    profile: Literal["oci", "activitypub"] = Field(
        default="oci", description="Defaults for header, headers and body_headers."
    )
    key_id: HeaderSecretValue = Field(description="The keyId parameter (sent in clear).")
    algorithm: Literal["rsa-sha256", "hmac-sha256"] = "rsa-sha256"
    key_encoding: KeyEncoding = Field(
        default="raw", description="hmac-sha256 only: the key is raw text or base64."
    )
    key: SecretValue = Field(
        description="PEM RSA private key (PKCS#8 or traditional); for hmac-sha256 the secret."
    )
    header: Literal["authorization", "signature"] | None = Field(
        default=None,
        description="Send `Authorization: Signature ...` or a `Signature:` header "
        "(default: the profile's).",
    )
    headers: tuple[str, ...] | None = Field(
        default=None, description="Headers signed on every request, in order (default: profile)."
    )
    body_headers: tuple[str, ...] | None = Field(
        default=None,
        description="Headers signed in addition on POST, PUT and PATCH (default: profile).",
    )

    @field_validator("key_id")
    @classmethod
    def _quotable_key_id(cls, key_id: Secret) -> Secret:
        if not all(" " <= ch <= "~" and ch not in '"\\' for ch in key_id.reveal()):
            raise ValueError("key_id must be printable ASCII without quotes or backslashes")
        return key_id

    @field_validator("key")
    @classmethod
    def _key_fits_algorithm(cls, key: Secret, info: ValidationInfo) -> Secret:
        algorithm = info.data.get("algorithm")
        if algorithm is not None:
            load_signing_key(
                _KEY_ALGORITHMS[algorithm],
                key.reveal(),
                key_encoding=info.data.get("key_encoding", "raw"),
                min_rsa_bits=_MIN_RSA_BITS,
            )
        return key

    @field_validator("headers", "body_headers")
    @classmethod
    def _valid_names(
        cls, names: tuple[str, ...] | None, info: ValidationInfo
    ) -> tuple[str, ...] | None:
        if names is None:
            return None
        if not names and info.field_name == "headers":  # else it would sign nothing on a GET
            raise ValueError("headers must name at least one header (omit it for the profile's)")
        lowered = tuple(name.strip().lower() for name in names)
        for name in lowered:
            if name != REQUEST_TARGET and not is_field_name(name):
                raise ValueError(f"{name!r} is not a header name or (request-target)")
            if name in UNSIGNABLE_FIELDS or name in {"authorization"}:
                raise ValueError(f"{name} cannot be signed: the proxy rewrites it in transit")
        if len(set(lowered)) != len(lowered):
            raise ValueError("a header is listed twice")
        return lowered


class CavageSigner(Signer[CavageConfig]):
    public_fields = frozenset({"key_id"})  # sent in clear as keyId

    def __init__(self, config: CavageConfig) -> None:
        profile = _PROFILES[config.profile]
        self._key: Final[SigningKey] = load_signing_key(
            _KEY_ALGORITHMS[config.algorithm],
            config.key.reveal(),
            key_encoding=config.key_encoding,
            min_rsa_bits=_MIN_RSA_BITS,
        )
        self._key_id: Final = config.key_id.reveal()
        self._algorithm: Final = config.algorithm
        self._version: Final = config.profile == "oci"  # OCI's documented version="1"
        header = config.header or profile.header
        self._auth_header: Final = "Authorization" if header == "authorization" else "Signature"
        headers = config.headers if config.headers is not None else profile.headers
        body_headers = (
            config.body_headers if config.body_headers is not None else profile.body_headers
        )
        # Decided once per config load: the names signed without a body and with one.
        self._headers: Final = headers
        self._with_body: Final = headers + tuple(h for h in body_headers if h not in headers)

    def _signed(self, method: str) -> tuple[str, ...]:
        return self._with_body if method.upper() in _BODY_METHODS else self._headers

    def needs_body(self, method: str) -> bool:
        return not _COMPUTED_BODY_HEADERS.isdisjoint(self._signed(method))

    def new_body_digest(self) -> BodyDigest:
        return hashlib.sha256()

    def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        signed_names = self._signed(request.method)
        added: list[tuple[str, str]] = []
        if "date" in signed_names and not _is_current(request.headers.get("Date"), ctx):
            added.append(("Date", formatdate(ctx.now_seconds, usegmt=True)))
        if not _COMPUTED_BODY_HEADERS.isdisjoint(signed_names):
            body_hash = base64.b64encode(request.body_hash(hashlib.sha256).digest()).decode()
            if "x-content-sha256" in signed_names:
                added.append(("x-content-sha256", body_hash))
            if "digest" in signed_names:
                added.append(("Digest", f"SHA-256={body_hash}"))
        auth_header = self._auth_header
        prepared = request.with_headers(added, remove=[auth_header])
        lines = [f"{name}: {self._value(name, prepared)}" for name in signed_names]
        signing_string = "\n".join(lines)
        signature = base64.b64encode(self._key.sign(signing_string.encode())).decode()
        params = [
            f'keyId="{self._key_id}"',
            f'algorithm="{self._algorithm}"',
            f'headers="{" ".join(signed_names)}"',
            f'signature="{signature}"',
        ]
        if self._version:
            params.insert(0, 'version="1"')
        value = ",".join(params)
        if auth_header == "Authorization":
            value = f"Signature {value}"
        return SignResult(
            request=prepared.with_headers(((auth_header, value),)),
            string_to_sign=signing_string,
        )

    @staticmethod
    def _value(name: str, request: UpstreamRequest) -> str:
        if name == REQUEST_TARGET:
            query = f"?{request.query}" if request.query else ""
            return f"{request.method.lower()} {request.path or '/'}{query}"
        values = request.headers.getall(name, None)
        if values is None:
            raise MissingComponent(f"the request has no {name} header, which this route signs")
        return ", ".join(value.strip() for value in values)

    def __repr__(self) -> str:
        return f"CavageSigner({self._algorithm}, headers={self._headers}, key={_MASK})"


def _is_current(date: str | None, ctx: SigningContext) -> bool:
    """Whether the app's `Date` names the signing time (within the tolerance)."""
    if date is None:
        return False
    try:
        when = parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError, IndexError):
        return False
    return abs(when - ctx.now_ms / 1000) <= DATE_TOLERANCE_SECONDS
