"""An independent Devengo verifier, written from docs/schemes.md#devengo without the proxy's code.

The server recomputes `base64(HMAC-SHA256(secret, [base64(body)] + nonce + timestamp + key id))`
from the four `X-Devengo-Api-Key-*` headers and the body bytes it received. Each of the four
must arrive exactly once, so a stale copy left beside ours fails here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping

NAMES = ("x-devengo-api-key-signature", "x-devengo-api-key-nonce")
NAMES += ("x-devengo-api-key-timestamp", "x-devengo-api-key-id")


def _header_values(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    values: dict[str, list[str]] = {}
    for name, value in items:
        values.setdefault(name.lower(), []).append(value)
    return values


def devengo_signature(
    body: bytes | None, nonce: str, timestamp: str, key_id: str, secret: str
) -> str:
    prefix = base64.b64encode(body).decode() if body else ""
    message = (prefix + nonce + timestamp + key_id).encode("utf-8")
    return base64.b64encode(
        hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()
    ).decode()


def verify_devengo(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes | None,
    api_key_id: str,
    secret: str,
    *,
    now_s: int | None = None,
    max_age_s: int = 60,
) -> bool:
    """True iff the headers carry one signature, nonce, timestamp and our key id, and it checks.

    `headers` may be a multidict (all its items are read). With `now_s`, the timestamp must
    also be within `max_age_s` of it: the server documents "not older than 60 s"; how it treats
    a future timestamp is unknown, so the same bound applies.
    """
    values = _header_values(headers)
    found = [values.get(name, []) for name in NAMES]
    if any(len(value) != 1 for value in found):
        return False
    signature, nonce, timestamp, key_id = (value[0] for value in found)
    if key_id != api_key_id or not (timestamp.isascii() and timestamp.isdigit()):
        return False
    if now_s is not None and abs(now_s - int(timestamp)) > max_age_s:
        return False
    expected = devengo_signature(body, nonce, timestamp, key_id, secret)
    return hmac.compare_digest(expected, signature)
