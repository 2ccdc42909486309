"""`query-key`: a static API key sent as a query parameter (`?api_key=...`).

The app's own parameter of that name is replaced where it stands (names are compared after
decoding, `+` as a space, so `api%5Fkey` is `api_key` too), further copies are dropped, and the
key is appended when the app sent none. Every other byte of the query is kept as the app sent
it. Like every credential, the key never shows in a log, an error or `sign` output (the proxy
logs paths without their query).
"""

from __future__ import annotations

from typing import Final, Literal
from urllib.parse import quote, unquote_to_bytes

from pydantic import field_validator

from proxy.secrets import SecretValue
from proxy.signers.base import Signer, SignerConfig, SigningContext, SignResult, UpstreamRequest

_UNRESERVED: Final = "-._~"  # RFC 3986: everything else in a name or value is percent-encoded


class QueryKeyConfig(SignerConfig):
    scheme: Literal["query-key"]
    name: str
    value: SecretValue

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not name:
            raise ValueError("the parameter name must not be empty")
        if not name.isprintable():
            raise ValueError("the parameter name must be printable text")
        return name


class QueryKeySigner(Signer[QueryKeyConfig]):
    def __init__(self, config: QueryKeyConfig) -> None:
        self._name: Final = config.name
        name, value = config.name, config.value.reveal()
        self._param: Final = f"{quote(name, safe=_UNRESERVED)}={quote(value, safe=_UNRESERVED)}"

    def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        segments = request.query.split("&") if request.query else []
        out: list[str] = []
        placed = False
        for segment in segments:
            if _decoded_name(segment) == self._name:
                if not placed:  # the first copy is replaced where it stands
                    out.append(self._param)
                    placed = True
                continue
            out.append(segment)
        if not placed:
            out.append(self._param)
        return SignResult(request=request.replace(query="&".join(out)), string_to_sign="")

    def __repr__(self) -> str:
        return f"QueryKeySigner(name={self._name!r}, value=**********)"


def _decoded_name(segment: str) -> str:
    raw = segment.partition("=")[0].encode("utf-8", "surrogateescape").replace(b"+", b" ")
    return unquote_to_bytes(raw).decode("utf-8", "replace")
