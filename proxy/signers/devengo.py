"""`devengo`: Devengo's API key signature, docs/schemes.md#devengo.

`HMAC-SHA256(secret, [strict_base64(body)] + nonce + timestamp + api_key_id)`, base64-encoded,
sent with the nonce, timestamp and key id as four `X-Devengo-Api-Key-*` headers. The app's own
`Authorization` (the deprecated JWT mode) and `X-Devengo-*` headers are dropped first: with a
signature header present the server ignores the JWT, and a stale copy must never travel.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Final, Literal

from proxy.secrets import HeaderSecretValue, SecretValue
from proxy.signers.base import Signer, SignerConfig, SigningContext, SignResult, UpstreamRequest


class _Base64Mac:
    """HMAC over the base64 of a body fed in pieces: base64 works in 3-byte groups, so up to
    two bytes wait for the next piece, and `finish` encodes the last of them with padding."""

    __slots__ = ("_mac", "_rest")

    def __init__(self, mac: hmac.HMAC, rest: bytes = b"") -> None:
        self._mac = mac
        self._rest = rest

    def update(self, data: bytes, /) -> None:
        data = self._rest + data
        whole = len(data) - len(data) % 3
        self._mac.update(base64.b64encode(data[:whole]))
        self._rest = data[whole:]

    def copy(self) -> _Base64Mac:
        return _Base64Mac(self._mac.copy(), self._rest)

    def finish(self) -> hmac.HMAC:
        mac = self._mac.copy()
        mac.update(base64.b64encode(self._rest))
        return mac

    def digest(self) -> bytes:
        return self.finish().digest()

    def hexdigest(self) -> str:
        return self.finish().hexdigest()


SIGNATURE_HEADER: Final = "X-Devengo-Api-Key-Signature"
NONCE_HEADER: Final = "X-Devengo-Api-Key-Nonce"
TIMESTAMP_HEADER: Final = "X-Devengo-Api-Key-Timestamp"
ID_HEADER: Final = "X-Devengo-Api-Key-Id"


class DevengoConfig(SignerConfig):
    """A route's `signer:` block for `scheme: devengo` (API key signature headers)."""

    scheme: Literal["devengo"]
    api_key_id: HeaderSecretValue  # X-Devengo-Api-Key-Id
    secret: SecretValue  # only the HMAC key


class DevengoSigner(Signer[DevengoConfig]):
    requires_request_body = True  # the body is part of the HMAC
    public_fields = frozenset({"api_key_id"})  # sent in clear in X-Devengo-Api-Key-Id

    def __init__(self, config: DevengoConfig) -> None:
        self._key_id: Final = config.api_key_id.reveal()
        # The secret is the HMAC key as its UTF-8 text, never base64-decoded.
        self._mac: Final = hmac.new(config.secret.reveal().encode(), digestmod=hashlib.sha256)

    def new_body_digest(self) -> _Base64Mac:
        return _Base64Mac(self._mac.copy())

    def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        timestamp = str(ctx.now_seconds)
        suffix = f"{ctx.nonce}{timestamp}{self._key_id}"
        if isinstance(request.body_digest, _Base64Mac):  # a large body, hashed as it arrived
            mac = request.body_digest.finish()
            data = f"<base64 of the {request.body_size}-byte body>{suffix}"
        else:
            # Strict base64 (no line breaks); an absent and an empty body both add "".
            data = base64.b64encode(request.body or b"").decode("ascii") + suffix
            mac = self._mac.copy()
            mac.update(data.encode())
            suffix = ""
        mac.update(suffix.encode())
        signature = base64.b64encode(mac.digest()).decode("ascii")
        stale = [
            name
            for name in request.headers
            if name.lower() == "authorization" or name.lower().startswith("x-devengo-")
        ]
        signed = request.with_headers(
            (
                (SIGNATURE_HEADER, signature),
                (NONCE_HEADER, ctx.nonce),
                (TIMESTAMP_HEADER, timestamp),
                (ID_HEADER, self._key_id),
            ),
            remove=stale,
        )
        return SignResult(request=signed, string_to_sign=data)

    def __repr__(self) -> str:
        return "DevengoSigner(api_key_id=**********, secret=**********)"
