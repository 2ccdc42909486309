"""`header`: a static API-key header, `name: value`."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from proxy.http import check_settable_header
from proxy.secrets import HeaderSecretValue
from proxy.signers.base import Signer, SignerConfig, SigningContext, SignResult, UpstreamRequest


class HeaderConfig(SignerConfig):
    scheme: Literal["header"]
    name: str
    value: HeaderSecretValue

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        check_settable_header(name)
        return name


class HeaderSigner(Signer[HeaderConfig]):
    def __init__(self, config: HeaderConfig) -> None:
        self._header = ((config.name, config.value.reveal()),)

    def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        return SignResult(request=request.with_headers(self._header), string_to_sign="")

    def __repr__(self) -> str:
        return f"HeaderSigner(name={self._header[0][0]!r}, value=**********)"
