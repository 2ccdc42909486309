"""`bearer`: a static token sent as `Authorization: Bearer <token>`.

Also Devengo's deprecated JWT fallback and Devo's Query API token alternative.
"""

from __future__ import annotations

from typing import Literal

from proxy.secrets import HeaderSecretValue
from proxy.signers.base import Signer, SignerConfig, SigningContext, SignResult, UpstreamRequest


class BearerConfig(SignerConfig):
    scheme: Literal["bearer"]
    token: HeaderSecretValue  # Authorization: Bearer <token>


class BearerSigner(Signer[BearerConfig]):
    def __init__(self, config: BearerConfig) -> None:
        self._header = (("Authorization", f"Bearer {config.token.reveal()}"),)

    def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        return SignResult(request=request.with_headers(self._header), string_to_sign="")

    def __repr__(self) -> str:
        return "BearerSigner(token=**********)"
