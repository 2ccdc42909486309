"""`devresults`: DevResults' query-string HMAC (`t`, `ms`, `s`), docs/schemes.md#devresults.

DevResults is an ASP.NET application, so the query is read the way its server reads it
(`HttpUtility.ParseQueryString` into a case-insensitive collection, sorted OrdinalIgnoreCase):

- `+` is a space and `%XX` escapes are UTF-8, invalid sequences becoming U+FFFD;
- names equal under OrdinalIgnoreCase are one parameter, spelled as first seen, whose values
  are joined with `,` in request order;
- `;` is not a separator, empty segments are dropped, and a bare `flag` is signed as `flag=`.

The app's query bytes go upstream untouched apart from its own `t`, `ms`, `s` (stale credentials
the server would merge with ours) and empty segments.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from typing import Final, Literal
from urllib.parse import quote, unquote_to_bytes

from proxy.secrets import SecretValue
from proxy.signers.base import Signer, SignerConfig, SigningContext, SignResult, UpstreamRequest

_AUTH_PARAMS: Final = frozenset({"T", "MS", "S"})  # upper-cased, as the server compares them
_BARE_KEY_WARNING: Final = (
    "the query has {count} parameter(s) without '=': signed as empty values, forwarded "
    "unchanged; DevResults' own handling of such parameters is unknown"
)


class DevResultsConfig(SignerConfig):
    scheme: Literal["devresults"]
    token: SecretValue
    secret: SecretValue


class DevResultsSigner(Signer[DevResultsConfig]):
    requires_request_body = False  # only the query is signed: the body streams
    public_fields = frozenset({"token"})  # sent in clear as `t`

    def __init__(self, config: DevResultsConfig) -> None:
        self._token: Final = config.token.reveal()
        self._token_param: Final = f"t={quote(self._token, safe='-._~')}"
        # Keyed once; each request signs with a copy, so the shared signer is never mutated.
        self._mac: Final = hmac.new(config.secret.reveal().encode(), digestmod=hashlib.sha256)

    def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        ms = str(ctx.now_ms)
        kept: list[str] = []
        params: dict[str, tuple[str, list[str]]] = {}  # upper-cased name -> (spelling, values)
        bare = 0
        for segment in filter(None, request.query.split("&")):
            raw_name, equals, raw_value = segment.partition("=")
            name = _decode(raw_name)
            upper = ordinal_upper(name)
            if upper in _AUTH_PARAMS:
                continue
            kept.append(segment)
            bare += not equals
            params.setdefault(upper, (name, []))[1].append(_decode(raw_value))
        # The app's own t/ms were dropped above, so these are the only ones.
        params["T"] = ("t", [self._token])
        params["MS"] = ("ms", [ms])

        string_to_sign = "".join(
            f"{name}|{','.join(values)}|"
            for _, (name, values) in sorted(params.items(), key=_utf16_order)
        )
        mac = self._mac.copy()
        mac.update(string_to_sign.encode())
        query = "&".join([*kept, self._token_param, f"ms={ms}", f"s={mac.hexdigest()}"])
        details = {"warning": _BARE_KEY_WARNING.format(count=bare)} if bare else {}
        return SignResult(
            request=request.replace(query=query), string_to_sign=string_to_sign, details=details
        )

    def __repr__(self) -> str:
        return "DevResultsSigner(token=**********, secret=**********)"


def _decode(component: str) -> str:
    # Work on bytes so that raw UTF-8, `%XX` escapes and raw bytes aiohttp could not decode
    # (lone surrogates from `surrogateescape`) join into one sequence, decoded once.
    raw = component.encode("utf-8", "surrogateescape").replace(b"+", b" ")
    return unquote_to_bytes(raw).decode("utf-8", "replace")


def _utf16_order(item: tuple[str, tuple[str, list[str]]]) -> bytes:
    # Big-endian UTF-16 bytes compare like .NET's UTF-16 code units: astral characters
    # (surrogates D800-DFFF) sort before U+E000-U+FFFF.
    return item[0].encode("utf-16-be")


def ordinal_upper(name: str) -> str:
    """`name` as .NET's OrdinalIgnoreCase compares it: each UTF-16 code unit upper-cased."""
    return name.upper() if name.isascii() else "".join(map(_upper_unit, name))


@functools.cache  # at most 65,536 BMP characters (plus astral ones, mapped to themselves)
def _upper_unit(char: str) -> str:
    # .NET maps a code unit by its *simple* (one-to-one) uppercase. Python only exposes the full
    # mapping (`ß` -> `SS`); where that has several characters the simple one, if any, is the
    # titlecase (`ᾳ` -> `ᾼ`). Astral characters are two surrogate units, which never change, and
    # .NET keeps dotless i (U+0131) as it is (matching Windows' invariant table).
    if ord(char) > 0xFFFF or char == "\u0131":
        return char
    for mapped in (char.upper(), char.title()):
        if len(mapped) == 1:
            return mapped
    return char
