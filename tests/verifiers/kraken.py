"""Kraken's check of a private REST call, written from the vendor's documentation (not from the
hmac scheme): API-Sign = base64(HMAC-SHA512(base64decode(secret), URI path + SHA256(nonce +
POST data))), the nonce being the form field `nonce`; the key is API-Key."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import parse_qs


def verify_kraken(
    path: str, body: bytes, headers: Mapping[str, str], api_key: str, secret: str
) -> bool:
    if headers.get("API-Key") != api_key:
        return False
    nonce = parse_qs(body.decode())["nonce"][0]
    inner = hashlib.sha256(nonce.encode() + body).digest()
    mac = hmac.new(base64.b64decode(secret), path.encode() + inner, hashlib.sha512)
    return hmac.compare_digest(base64.b64encode(mac.digest()).decode(), headers.get("API-Sign", ""))
