"""The closed vocabularies of `scheme: hmac`: filters, digests, encodings, `now` formats and
`random` kinds. Every value is bytes; text is UTF-8."""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final, Literal
from urllib.parse import quote

Bytes = Callable[[bytes], bytes]

DIGESTS: Final[dict[str, Callable[[bytes], bytes]]] = {
    "md5": lambda data: hashlib.md5(data, usedforsecurity=False).digest(),
    "sha1": lambda data: hashlib.sha1(data, usedforsecurity=False).digest(),
    "sha256": lambda data: hashlib.sha256(data).digest(),
    "sha384": lambda data: hashlib.sha384(data).digest(),
    "sha512": lambda data: hashlib.sha512(data).digest(),
}
DigestName = Literal["md5", "sha1", "sha256", "sha384", "sha512"]

ALGORITHMS: Final = {
    "hmac-sha1": "sha1",
    "hmac-sha256": "sha256",
    "hmac-sha384": "sha384",
    "hmac-sha512": "sha512",
}
Algorithm = Literal["hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512"]

ENCODINGS: Final[dict[str, Bytes]] = {
    "hex": lambda data: data.hex().encode("ascii"),
    "base64": base64.b64encode,
    "base64url": base64.urlsafe_b64encode,  # with `=` padding
    "base64url_nopad": lambda data: base64.urlsafe_b64encode(data).rstrip(b"="),
}
Encoding = Literal["hex", "base64", "base64url", "base64url_nopad"]


def pct(data: bytes) -> bytes:
    """RFC 3986 percent-encoding: only A-Z a-z 0-9 - . _ ~ stay, hex digits upper-case."""
    return quote(data, safe="").encode("ascii")


def _b64decode(data: bytes) -> bytes:
    text = b"".join(data.split())
    text += b"=" * (-len(text) % 4)
    altchars = b"-_" if b"-" in text or b"_" in text else None
    try:
        return base64.b64decode(text, altchars=altchars, validate=True)
    except binascii.Error:
        raise ValueError("b64decode: the value is not valid base64") from None


def _hexdecode(data: bytes) -> bytes:
    try:
        return bytes.fromhex(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("hexdecode: the value is not valid hex") from None


def _case(data: bytes, upper: bool) -> bytes:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:  # not text: ASCII letters only
        return data.upper() if upper else data.lower()
    return (text.upper() if upper else text.lower()).encode("utf-8")


FILTERS: Final[dict[str, Bytes]] = {
    "upper": lambda data: _case(data, upper=True),
    "lower": lambda data: _case(data, upper=False),
    "trim": bytes.strip,
    **DIGESTS,
    "hex": ENCODINGS["hex"],
    "b64": base64.b64encode,
    "b64url": base64.urlsafe_b64encode,
    "b64decode": _b64decode,
    "hexdecode": _hexdecode,
    "pct": pct,
}

_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")  # fmt: skip


def _utc(now_ms: int) -> datetime:
    return datetime.fromtimestamp(now_ms // 1000, tz=UTC)


def _rfc1123(now_ms: int) -> str:
    # Fixed English names: the locale must not change a signed value.
    t = _utc(now_ms)
    return f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t:%Y %H:%M:%S} GMT"


NOW_FORMATS: Final[dict[str, Callable[[int], str]]] = {
    "epoch_s": lambda ms: str(ms // 1000),
    "epoch_ms": str,
    "iso8601": lambda ms: f"{_utc(ms):%Y-%m-%dT%H:%M:%S}Z",
    "iso8601_ms": lambda ms: f"{_utc(ms):%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z",
    "iso8601_basic": lambda ms: f"{_utc(ms):%Y%m%dT%H%M%S}Z",
    "iso8601_noz": lambda ms: f"{_utc(ms):%Y-%m-%dT%H:%M:%S}",
    "rfc1123": _rfc1123,
}
NowFormat = Literal[
    "epoch_s", "epoch_ms", "iso8601", "iso8601_ms", "iso8601_basic", "iso8601_noz", "rfc1123"
]

RANDOM_KINDS: Final[dict[str, Callable[[], str]]] = {
    "uuid4": lambda: str(uuid.uuid4()),
    "hex8": lambda: secrets.token_hex(4),
    "hex16": lambda: secrets.token_hex(8),
    "hex32": lambda: secrets.token_hex(16),
    "hex64": lambda: secrets.token_hex(32),
}
RandomKind = Literal["uuid4", "hex8", "hex16", "hex32", "hex64"]
