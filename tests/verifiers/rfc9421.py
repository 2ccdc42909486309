"""RFC 9421 verification by an independent implementation: the `http-message-signatures` library
(PyPI, not the proxy's code), with its RFC 9530 Content-Digest check over the bytes received.

The proxy builds its signature base itself; this verifier rebuilds it from the request as the
upstream received it, so any difference in a component's value, the parameters or the
signature encoding fails here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from http_message_signatures import (
    HTTPMessageVerifier,
    InvalidSignature,
    MappingKeyResolver,
    VerifyResult,
    algorithms,
)

ALGORITHMS = {
    "hmac-sha256": algorithms.HMAC_SHA256,
    "ed25519": algorithms.ED25519,
    "ecdsa-p256-sha256": algorithms.ECDSA_P256_SHA256,
    "ecdsa-p384-sha384": algorithms.ECDSA_P384_SHA384,
    "rsa-pss-sha512": algorithms.RSA_PSS_SHA512,
    "rsa-v1_5-sha256": algorithms.RSA_V1_5_SHA256,
}

__all__ = ["InvalidSignature", "ReceivedRequest", "verify_rfc9421"]


class _Fields:
    """Header field lines in wire order, repeats kept (what the library reads)."""

    def __init__(self, lines: Iterable[tuple[str, str]]) -> None:
        self._lines = list(lines)

    def items(self) -> list[tuple[str, str]]:
        return list(self._lines)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(dict.fromkeys(name for name, _ in self._lines))

    def __contains__(self, name: object) -> bool:
        return any(n.lower() == str(name).lower() for n, _ in self._lines)


@dataclass
class ReceivedRequest:
    """A request as an upstream received it: `url` is scheme://Host + the raw request target."""

    method: str
    url: str
    header_lines: list[tuple[str, str]]

    @property
    def headers(self) -> _Fields:
        return _Fields(self.header_lines)


def verify_rfc9421(
    request: ReceivedRequest,
    *,
    algorithm: str,
    key_id: str,
    public_key: bytes,
    body: bytes | None = None,
    require: Sequence[str] = (),
) -> list[VerifyResult]:
    """Verify with the library; raises `InvalidSignature` if anything is wrong.

    `public_key` is a PEM public key, or the shared secret for hmac-sha256. With `body`, the
    library also checks the signed Content-Digest against those bytes.
    """
    verifier = HTTPMessageVerifier(
        signature_algorithm=ALGORITHMS[algorithm],
        key_resolver=MappingKeyResolver(public_keys={key_id: public_key}, private_keys={}),
    )
    return verifier.verify(
        request, max_age=timedelta(minutes=5), require_components=require, body=body
    )
