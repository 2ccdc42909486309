"""The HTTP rules the proxy applies, in one place (RFC 9110 and 9112).

Which headers belong to one connection (hop-by-hop) and never travel on, which header names are
valid, and which headers the proxy decides itself, so that neither a route's static header edits
nor a `header` signer may set them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

# RFC 9110 5.1: a field name is a token.
_NAME_PATTERN: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_FIELD_NAME: Final = re.compile(_NAME_PATTERN)
# All of a message's names checked at once: joined by newlines, which no valid name contains.
_FIELD_NAMES: Final = re.compile(rf"{_NAME_PATTERN}(?:\n{_NAME_PATTERN})*")

DEFAULT_PORTS: Final = {"http": "80", "https": "443"}

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
"""Headers of one connection (RFC 9110 7.6.1), dropped both ways. So are `Proxy-*` (meant for
this proxy) and every name a `Connection` header lists (`connection_tokens`)."""

MANAGED_HEADERS: Final = HOP_BY_HOP | {"host", "content-length"}
"""Headers whose value the proxy decides: framing, routing and the connection. A route's
`headers.set`/`headers.remove` and a `header` signer may not name them."""


def is_field_name(name: str) -> bool:
    return _FIELD_NAME.fullmatch(name) is not None


def host_to_sign(scheme: str, host: str) -> str:
    """`host[:port]` without the scheme's default port: what clients send as `Host`, and the
    authority AWS, RFC 9421 (`@authority`, 2.2.3) and the hmac scheme (`{authority}`) sign."""
    default = DEFAULT_PORTS.get(scheme.lower())
    if default and host.endswith(f":{default}"):
        return host[: -len(default) - 1]
    return host


def check_settable_header(name: str) -> None:
    """Raise ValueError unless a config may set or remove `name`: a valid field name that is not
    one of the `MANAGED_HEADERS` (route header edits, the `header` and `hmac` schemes)."""
    if not is_field_name(name):
        raise ValueError(f"{name!r} is not a valid header name")
    if name.lower() in MANAGED_HEADERS:
        raise ValueError(
            f"{name} is managed by the proxy, which manages framing, routing and the connection"
            " itself: it cannot be set or removed"
        )


def are_field_names(names: Iterable[str]) -> bool:
    """Whether every name is a valid field name (one regex call for all of them). For names as
    an HTTP parser delivers them, split at line ends: a name holding a newline is not checked."""
    return _FIELD_NAMES.fullmatch("\n".join(names)) is not None


def connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """The header names a `Connection` header lists (hop-by-hop too), lower-cased."""
    values = headers.getall("Connection", ())
    if not values:
        return frozenset()
    return frozenset(token.strip().lower() for value in values for token in value.split(","))


def strip_hop_by_hop(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], also: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """Drop hop-by-hop headers: the fixed set, `Proxy-*`, those `Connection` names, and the
    lower-case names in `also`."""
    named = connection_tokens(headers)
    result: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lowered = name.lower()
        if (
            lowered in HOP_BY_HOP
            or lowered.startswith("proxy-")
            or (named and lowered in named)
            or (also and lowered in also)
        ):
            continue
        result.add(name, value)
    return result
