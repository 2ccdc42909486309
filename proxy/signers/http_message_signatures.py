"""`http-message-signatures`: RFC 9421 HTTP Message Signatures, with RFC 9530 Content-Digest.

The route lists the covered components; each request gets a `Signature-Input` and a
`Signature` member under the route's `label`, over the signature base of `rfc9421.py`, signed by
the route's key (`signature_keys.py`). The parameters go in the order created, expires, keyid,
nonce, tag, alg, as the RFC's examples do.

- The app's own `Signature` and `Signature-Input` are dropped: a request carries our signature
  only.
- With `content-digest` covered and `content_digest` an algorithm, the proxy hashes the bytes it
  sends (incrementally, so a large body spools to disk in flat memory) and sets
  `Content-Digest`, replacing the app's. With `content_digest: none` the app's header is signed
  as sent.
- A covered component the request lacks, or an `@query-param` absent or repeated, is refused
  (`MissingComponent`): the proxy never signs over nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Final, Literal

import http_sf
from http_sf.item import ser_item
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
from proxy.signers.rfc9421 import (
    Component,
    MissingComponent,
    SignatureParams,
    StructuredType,
    parse_component,
    signature_base,
    signature_params_value,
)
from proxy.signers.signature_keys import Algorithm, KeyEncoding, SigningKey, load_signing_key

SIGNATURE: Final = "Signature"
SIGNATURE_INPUT: Final = "Signature-Input"
CONTENT_DIGEST: Final = "Content-Digest"
_DIGESTS: Final[dict[str, Callable[[], BodyDigest]]] = {
    "sha-256": hashlib.sha256,
    "sha-512": hashlib.sha512,
}
_MASK: Final = "**********"
_SF_KEY: Final = re.compile(r"^[a-z*][a-z0-9_.*-]*$")  # RFC 9651 3.1.2

__all__ = ["HttpMessageSignaturesConfig", "HttpMessageSignaturesSigner", "MissingComponent"]


class HttpMessageSignaturesConfig(SignerConfig):
    """A route's `signer:` block for `scheme: http-message-signatures` (RFC 9421)."""

    scheme: Literal["http-message-signatures"]
    key_id: HeaderSecretValue = Field(description="The keyid parameter (sent in clear).")
    algorithm: Algorithm
    key_encoding: KeyEncoding = Field(
        default="raw", description="hmac-sha256 only: the key is raw text or base64."
    )
    key: SecretValue = Field(
        description="PEM private key (PKCS#8 or traditional RSA/EC); for hmac-sha256 the "
        "shared secret."
    )
    label: str = Field(default="sig1", description="The signature's label (a structured key).")
    created: bool = Field(default=True, description="Add created (the signing time).")
    expires: int | None = Field(
        default=None, ge=1, description="Add expires, this many seconds after the signing time."
    )
    nonce: bool = Field(default=False, description="Add a fresh random nonce per request.")
    tag: str | None = Field(default=None, description="An application tag parameter.")
    include_alg: bool = Field(default=False, description='Add alg="..." to the parameters.')
    content_digest: Literal["sha-256", "sha-512", "none"] = Field(
        default="sha-256",
        description="With content-digest covered: set Content-Digest (RFC 9530) over the body "
        "sent; none signs the app's own header.",
    )
    structured_fields: dict[str, Literal["item", "list", "dictionary"]] = Field(
        default_factory=dict,
        description="Structured types of fields not in the IANA registry, for ;sf and ;key.",
    )
    # Last: its validator reads content_digest and structured_fields.
    components: tuple[str, ...] = Field(
        description='Covered components in order: @method, @authority, @query-param;name="x", '
        'content-type, a field with ;sf, ;key="member" or ;bs.'
    )

    @field_validator("key_id")
    @classmethod
    def _printable_key_id(cls, key_id: Secret) -> Secret:
        if not all(" " <= ch <= "~" for ch in key_id.reveal()):
            raise ValueError("key_id must be printable ASCII (a structured-field string)")
        return key_id

    @field_validator("key")
    @classmethod
    def _key_fits_algorithm(cls, key: Secret, info: ValidationInfo) -> Secret:
        algorithm = info.data.get("algorithm")
        encoding = info.data.get("key_encoding", "raw")
        if algorithm is not None:
            load_signing_key(algorithm, key.reveal(), key_encoding=encoding)
        return key

    @field_validator("label")
    @classmethod
    def _valid_label(cls, label: str) -> str:
        if not _SF_KEY.match(label):
            raise ValueError(
                f"{label!r} is not a structured-field key (a-z, 0-9, _ - . *; "
                "starting with a letter or *)"
            )
        return label

    @field_validator("tag")
    @classmethod
    def _valid_tag(cls, tag: str | None) -> str | None:
        if tag is not None and not all(" " <= ch <= "~" for ch in tag):
            raise ValueError("tag must be printable ASCII")
        return tag

    @field_validator("structured_fields")
    @classmethod
    def _lower_names(cls, fields: dict[str, StructuredType]) -> dict[str, StructuredType]:
        for name in fields:
            if not is_field_name(name):
                raise ValueError(f"{name!r} is not an HTTP field name")
        return {name.lower(): kind for name, kind in fields.items()}

    @field_validator("components")
    @classmethod
    def _valid_components(
        cls, components: tuple[str, ...], info: ValidationInfo
    ) -> tuple[str, ...]:
        structured = info.data.get("structured_fields", {})
        digest = info.data.get("content_digest", "none")
        seen: set[str] = set()
        for text in components:
            component = parse_component(text, structured)
            member = component.param("key")
            if (
                component.name == "content-digest"
                and digest != "none"
                and member not in {None, digest}
            ):
                raise ValueError(
                    f"{component.identifier} can never be present: the proxy sets "
                    f"Content-Digest with {digest} only (content_digest)"
                )
            if component.identifier in seen:
                raise ValueError(f"{component.identifier} is listed twice")
            seen.add(component.identifier)
        return components


class HttpMessageSignaturesSigner(Signer[HttpMessageSignaturesConfig]):
    public_fields = frozenset({"key_id"})  # sent in clear as keyid

    def __init__(self, config: HttpMessageSignaturesConfig) -> None:
        self._key: Final[SigningKey] = load_signing_key(
            config.algorithm, config.key.reveal(), key_encoding=config.key_encoding
        )
        self._key_id: Final = config.key_id.reveal()
        self._label: Final = config.label
        self._structured: Final = dict(config.structured_fields)
        self._components: Final[tuple[Component, ...]] = tuple(
            parse_component(text, self._structured) for text in config.components
        )
        self._created: Final = config.created
        self._expires: Final = config.expires
        self._nonce: Final = config.nonce
        self._tag: Final = config.tag
        self._alg: Final = config.algorithm if config.include_alg else None
        covers_digest = any(c.name == "content-digest" for c in self._components)
        self._digest: Final = (
            config.content_digest if covers_digest and config.content_digest != "none" else None
        )

    def needs_body(self, method: str) -> bool:
        return self._digest is not None

    def new_body_digest(self) -> BodyDigest | None:
        return _DIGESTS[self._digest]() if self._digest is not None else None

    def _params(self, ctx: SigningContext) -> SignatureParams:
        params: SignatureParams = {}
        if self._created:
            params["created"] = ctx.now_seconds
        if self._expires is not None:
            params["expires"] = ctx.now_seconds + self._expires
        params["keyid"] = self._key_id
        if self._nonce:
            params["nonce"] = ctx.nonce
        if self._tag is not None:
            params["tag"] = self._tag
        if self._alg is not None:
            params["alg"] = self._alg
        return params

    def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        remove = [SIGNATURE, SIGNATURE_INPUT]
        added: list[tuple[str, str]] = []
        if self._digest is not None:
            added.append((CONTENT_DIGEST, self._content_digest(request)))
        prepared = request.with_headers(added, remove=remove)
        params_value = signature_params_value(self._components, self._params(ctx))
        base = signature_base(self._components, prepared, params_value, self._structured)
        signature = self._key.sign(base.encode())
        signed = prepared.with_headers(
            (
                (SIGNATURE_INPUT, f"{self._label}={params_value}"),
                (SIGNATURE, f"{self._label}={ser_item(signature)}"),
            )
        )
        return SignResult(
            request=signed,
            string_to_sign=base,
            details={"signature_input": f"{self._label}={params_value}"},
        )

    def _content_digest(self, request: UpstreamRequest) -> str:
        assert self._digest is not None
        digest = request.body_hash(_DIGESTS[self._digest]).digest()
        return http_sf.ser({self._digest: (digest, {})})

    def __repr__(self) -> str:
        names = " ".join(c.identifier for c in self._components)
        return (
            f"HttpMessageSignaturesSigner({self._key.algorithm}, label={self._label}, "
            f"components=({names}), key={_MASK})"
        )
