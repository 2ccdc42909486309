"""An independent DevResults verifier, written from docs/schemes.md#devresults without the
proxy's code.

It checks a request the way the ASP.NET server reads it: the query parsed into a case-insensitive
collection (repeated names joined with `,`), `s` taken out, the rest sorted OrdinalIgnoreCase and
signed as `key|value|...`. A stale `t`/`ms`/`s` left beside the fresh ones is merged into them,
so such a request fails here as it would there.

Pass the raw query as it arrived (aiohttp: `request.rel_url.raw_query_string`), not a decoded one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from urllib.parse import urlsplit

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


def _url_decode(text: str) -> str:
    """`+` is a space, `%XX` are bytes, the whole decoded as UTF-8 with U+FFFD for bad bytes."""
    raw = text.encode("utf-8", "surrogateescape").replace(b"+", b" ")
    raw = _ESCAPE.sub(lambda match: bytes([int(match.group(1), 16)]), raw)
    return raw.decode("utf-8", "replace")


def _code_units_upper(name: str) -> tuple[int, ...]:
    """The name's UTF-16 code units, each replaced by its simple uppercase (OrdinalIgnoreCase)."""
    data = name.encode("utf-16-le")
    units = [int.from_bytes(data[i : i + 2], "little") for i in range(0, len(data), 2)]
    return tuple(_simple_upper(unit) for unit in units)


def _simple_upper(unit: int) -> int:
    if 0xD800 <= unit <= 0xDFFF or unit == 0x0131:  # surrogates; .NET keeps dotless i
        return unit
    char = chr(unit)
    candidates = [char.upper(), char.title()]  # full mappings; the simple one has one character
    return next((ord(c) for c in candidates if len(c) == 1), unit)


def parse_query(query: str) -> dict[tuple[int, ...], tuple[str, list[str]]]:
    """Query -> {folded name: (name as first seen, values in order)}; `flag` counts as `flag=`."""
    collection: dict[tuple[int, ...], tuple[str, list[str]]] = {}
    for segment in query.split("&"):
        if segment == "":
            continue
        if "=" in segment:
            name, value = segment.split("=", 1)
        else:
            name, value = segment, ""
        name, value = _url_decode(name), _url_decode(value)
        entry = collection.setdefault(_code_units_upper(name), (name, []))
        entry[1].append(value)
    return collection


def devresults_string_to_sign(collection: dict[tuple[int, ...], tuple[str, list[str]]]) -> str:
    return "".join(
        name + "|" + ",".join(values) + "|"
        for _, (name, values) in sorted(collection.items(), key=lambda entry: entry[0])
    )


def verify_devresults(
    query: str,
    token: str,
    secret: str,
    *,
    now_ms: int | None = None,
    max_skew_ms: int = 300_000,
) -> bool:
    """True iff `query` carries exactly one `t` (= token), `ms` and a valid `s`.

    With `now_ms`, `ms` must also be within `max_skew_ms` of it (no tolerance is documented).
    """
    collection = parse_query(query)
    signature = collection.pop(_code_units_upper("s"), None)
    stamp = collection.get(_code_units_upper("ms"))
    sent_token = collection.get(_code_units_upper("t"))
    if signature is None or stamp is None or sent_token is None:
        return False
    if sent_token[1] != [token] or len(stamp[1]) != 1 or len(signature[1]) != 1:
        return False
    if now_ms is not None:
        try:
            skew = abs(float(stamp[1][0]) - now_ms)
        except ValueError:
            return False
        if not skew <= max_skew_ms:  # also rejects nan
            return False
    expected = hmac.new(
        secret.encode("utf-8"),
        devresults_string_to_sign(collection).encode("utf-8"),
        hashlib.sha256,
    ).hexdigest()
    # Bytes: compare_digest refuses non-ASCII str, and a tampered `s` may be anything.
    return hmac.compare_digest(expected.encode(), signature[1][0].encode())


def verify_devresults_url(url: str, token: str, secret: str, **kwargs: int) -> bool:
    return verify_devresults(urlsplit(url).query, token, secret, **kwargs)
