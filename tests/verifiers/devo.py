"""An independent Devo verifier, written from docs/schemes.md#devo without the proxy's code.

Stricter than Devo on one point: any Devo credential header beyond the expected ones (a second
key header, a duplicate, a `standAloneToken`) fails verification. Which one Devo would honour is
undocumented, so a request carrying two is ambiguous and the proxy must never send one.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

KEY_HEADER_NAMES = {
    "reseller": "x-logtrust-reseller-apikey",
    "domain": "x-logtrust-domain-apikey",
    "query": "x-logtrust-apikey",
}


def _devo_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """Devo's credential headers, names lower-cased; `.items()` of a multidict keeps copies."""
    return [
        (name.lower(), value)
        for name, value in headers.items()
        if name.lower().startswith("x-logtrust-") or name.lower() == "standalonetoken"
    ]


def devo_signature(api_key: str, api_secret: str, body: bytes, timestamp: str) -> str:
    message = api_key.encode("utf-8") + body + timestamp.encode("ascii")
    return hmac.new(api_secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify_devo(
    headers: Mapping[str, str],
    body: bytes,
    api_key: str,
    api_secret: str,
    key_header: str = "reseller",
    *,
    now_ms: int | None = None,
    max_skew_ms: int = 300_000,
) -> bool:
    """True iff the headers carry exactly our key, a timestamp and the valid signature."""
    found = _devo_headers(headers)
    names = sorted(name for name, _ in found)
    wanted = sorted([KEY_HEADER_NAMES[key_header], "x-logtrust-timestamp", "x-logtrust-sign"])
    if names != wanted:
        return False
    sent = dict(found)
    timestamp = sent["x-logtrust-timestamp"]
    if sent[KEY_HEADER_NAMES[key_header]] != api_key:
        return False
    if not (timestamp.isascii() and timestamp.isdigit()):
        return False
    if now_ms is not None and abs(int(timestamp) - now_ms) > max_skew_ms:
        return False
    expected = devo_signature(api_key, api_secret, body, timestamp)
    return hmac.compare_digest(
        expected.encode(), sent["x-logtrust-sign"].encode("utf-8", "surrogateescape")
    )


def verify_devo_token(headers: Mapping[str, str], token: str) -> bool:
    """True iff the only Devo credential is one `standAloneToken` equal to `token`."""
    return _devo_headers(headers) == [("standalonetoken", token)]
