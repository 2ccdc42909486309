"""`devo` and `devo-token`: Devo's API authentication, docs/schemes.md#devo.

`devo` signs `HMAC-SHA256(api_secret, api_key || body || timestamp)` over the raw body bytes and
sends the key, timestamp and signature as `x-logtrust-*` headers; the key header depends on the
API. `devo-token` is the common-domain alternative: one `standAloneToken` header, no signature.

Both drop every Devo credential header the app sent first, so a request carries exactly one set
of credentials: ours.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Final, Literal

from proxy.secrets import HeaderSecretValue, SecretValue
from proxy.signers.base import (
    BodyDigest,
    Signer,
    SignerConfig,
    SigningContext,
    SignResult,
    UpstreamRequest,
)

KEY_HEADERS: Final = {
    "reseller": "x-logtrust-reseller-apikey",  # Provisioning API, multitenant credentials
    "domain": "x-logtrust-domain-apikey",  # Provisioning API, a domain's own key
    "query": "x-logtrust-apikey",  # Query API and Relay API
}
TIMESTAMP_HEADER: Final = "x-logtrust-timestamp"
SIGN_HEADER: Final = "x-logtrust-sign"
TOKEN_HEADER: Final = "standAloneToken"  # noqa: S105 (a header name, not a token)
_BINARY_BODY_WARNING: Final = (
    "the body is not UTF-8: signed over its raw bytes, which Devo has not confirmed "
    "(string_to_sign shows the bytes backslash-escaped)"
)


def _devo_credential_headers(names: Iterable[str]) -> list[str]:
    return [
        name
        for name in names
        if name.lower().startswith("x-logtrust-") or name.lower() == TOKEN_HEADER.lower()
    ]


class DevoConfig(SignerConfig):
    scheme: Literal["devo"]
    api_key: HeaderSecretValue  # sent in the key header
    api_secret: SecretValue  # only the HMAC key
    key_header: Literal["reseller", "domain", "query"] = "reseller"


class DevoSigner(Signer[DevoConfig]):
    requires_request_body = True  # the body is part of the HMAC
    public_fields = frozenset({"api_key"})  # sent in clear in the key header

    def __init__(self, config: DevoConfig) -> None:
        self._api_key: Final = config.api_key.reveal()
        self._key_header: Final = KEY_HEADERS[config.key_header]
        # Keyed once and already fed the key; each request continues from a copy.
        self._mac: Final = hmac.new(config.api_secret.reveal().encode(), digestmod=hashlib.sha256)
        self._mac.update(self._api_key.encode())

    def new_body_digest(self) -> BodyDigest:
        return self._mac.copy()  # keyed, already fed the api key: the body follows

    def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        body = request.body or b""  # absent and empty both contribute nothing
        timestamp = str(ctx.now_ms)
        mac = request.body_hash(self._mac.copy)
        mac.update(timestamp.encode())
        signed = request.with_headers(
            (
                (self._key_header, self._api_key),
                (TIMESTAMP_HEADER, timestamp),
                (SIGN_HEADER, mac.hexdigest()),
            ),
            remove=_devo_credential_headers(request.headers.keys()),
        )
        details: dict[str, str] = {}
        try:
            shown = body.decode()
            if request.spooled is not None:
                shown = f"<the {request.body_size}-byte body>"
        except UnicodeDecodeError:
            shown = body.decode(errors="backslashreplace")  # for display only
            details["warning"] = _BINARY_BODY_WARNING
        return SignResult(
            request=signed, string_to_sign=f"{self._api_key}{shown}{timestamp}", details=details
        )

    def __repr__(self) -> str:
        return f"DevoSigner({self._key_header}, api_key=**********, api_secret=**********)"


class DevoTokenConfig(SignerConfig):
    scheme: Literal["devo-token"]
    token: HeaderSecretValue  # the standAloneToken header


class DevoTokenSigner(Signer[DevoTokenConfig]):
    requires_request_body = False

    def __init__(self, config: DevoTokenConfig) -> None:
        self._header: Final = ((TOKEN_HEADER, config.token.reveal()),)

    def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        signed = request.with_headers(
            self._header, remove=_devo_credential_headers(request.headers.keys())
        )
        return SignResult(request=signed, string_to_sign="")

    def __repr__(self) -> str:
        return "DevoTokenSigner(token=**********)"
