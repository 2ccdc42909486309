"""Binance's check of a SIGNED request, written from the vendor's documentation (not from the
hmac scheme): `signature` is the last query parameter, the HMAC-SHA256 hex of everything before
it (the query as sent) followed by the body, keyed with the secret; the key is X-MBX-APIKEY and
`timestamp` (epoch ms) must be within `recvWindow` of the server's clock."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import parse_qsl


def verify_binance(
    raw_query: str, body: bytes, headers: Mapping[str, str], api_key: str, secret: str, now_ms: int
) -> bool:
    signed, sep, signature = raw_query.rpartition("&signature=")
    if not sep or "&" in signature or headers.get("X-MBX-APIKEY") != api_key:
        return False
    expected = hmac.new(secret.encode(), signed.encode() + body, hashlib.sha256).hexdigest()
    params = dict(parse_qsl(signed))
    window = int(params.get("recvWindow", "5000"))
    timestamp = int(params.get("timestamp", "0"))
    return hmac.compare_digest(expected, signature) and abs(now_ms - timestamp) <= window
