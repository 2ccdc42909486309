"""`example-hmac`: a third-party scheme for signing-proxy, installed as a plugin.

It signs `METHOD \\n PATH \\n TIMESTAMP` with HMAC-SHA256 and sends the key id, the timestamp
(epoch seconds) and the hex signature as three headers. Same contract as the built-in schemes:
an immutable config model (validated at load, shown by `signing-proxy schema`), a signer built
once per config load, and a pure `sign()` that takes the time from the `SigningContext`.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

from proxy.secrets import HeaderSecretValue, SecretValue
from proxy.signers import Signer, SignerConfig, SigningContext, SignResult, UpstreamRequest

__all__ = ["ExampleConfig", "ExampleSigner"]


class ExampleConfig(SignerConfig):
    """A route's `signer:` block for `scheme: example-hmac`."""

    scheme: Literal["example-hmac"]
    key_id: HeaderSecretValue  # sent in a header: control characters are a config error
    secret: SecretValue
    header_prefix: str = "X-Example"


class ExampleSigner(Signer[ExampleConfig]):  # scheme and config_model come from ExampleConfig
    public_fields = frozenset({"key_id"})  # sent in clear

    def __init__(self, config: ExampleConfig) -> None:
        self._key_id = config.key_id.reveal()
        self._prefix = config.header_prefix
        self._mac = hmac.new(config.secret.reveal().encode(), digestmod=hashlib.sha256)

    def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        timestamp = str(ctx.now_seconds)
        message = f"{request.method}\n{request.path}\n{timestamp}"
        mac = self._mac.copy()
        mac.update(message.encode())
        signed = request.with_headers(
            {
                f"{self._prefix}-Key": self._key_id,
                f"{self._prefix}-Timestamp": timestamp,
                f"{self._prefix}-Signature": mac.hexdigest(),
            }
        )
        return SignResult(signed, string_to_sign=message)

    def __repr__(self) -> str:
        return "ExampleSigner(key_id=**********, secret=**********)"
