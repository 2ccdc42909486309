"""What a request must be to be let in: checked at the door, before routing and signing.

Every rule here gives the same answer whichever aiohttp parser read the request (llhttp, or the
pure-Python one where no wheel exists): the parsers differ in what they tolerate, so the proxy
re-checks what it relies on instead of trusting either. A request refused here never reaches a
signer or an upstream, and its connection is closed.

- Methods: the ones llhttp knows, exactly as sent (upper case); `TRACE` and `TRACK` ask the
  upstream to echo the request back, credential included, so they are refused (405).
- The request-target: printable ASCII only (RFC 9112 3.2): raw non-ASCII or a control
  character is a 400 for both parsers, as the README says.
- Header values: no control character but HTAB (RFC 9110 5.5), as llhttp holds them; the
  pure-Python parser of older aiohttp releases (3.11) let them through.
- `Content-Length`: decimal digits with no leading zero, at most 2^63-1 (RFC 9110 8.6). A
  leading zero is read as octal by some servers; a value past 2^64 wraps in others.
- `Transfer-Encoding`: `chunked` alone. Any other coding is refused (501, as nginx does) rather
  than silently dropped.
- Ports (in `Host` or an absolute-form target): 1 to 5 ASCII digits, 1-65535; an empty port
  is the default port.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from aiohttp import web

from proxy.errors import ProxyError

# What llhttp (aiohttp's C parser) accepts in a request line, case-sensitively; the pure-Python
# parser is held to the same list (proxy/aiohttp_internals.py).
KNOWN_METHODS: Final = frozenset(
    {
        "ACL", "BIND", "CHECKOUT", "CONNECT", "COPY", "DELETE", "GET", "HEAD", "LINK", "LOCK",
        "M-SEARCH", "MERGE", "MKACTIVITY", "MKCALENDAR", "MKCOL", "MOVE", "NOTIFY", "OPTIONS",
        "PATCH", "POST", "PROPFIND", "PROPPATCH", "PURGE", "PUT", "QUERY", "REBIND", "REPORT",
        "SEARCH", "SOURCE", "SUBSCRIBE", "TRACE", "UNBIND", "UNLINK", "UNLOCK", "UNSUBSCRIBE",
    }
)  # fmt: skip
# The upstream answers these with the request it received: the signed credential included.
ECHO_METHODS: Final = frozenset({"TRACE", "TRACK"})
MAX_CONTENT_LENGTH: Final = 2**63 - 1
_CONTENT_LENGTH: Final = re.compile(r"0|[1-9][0-9]{0,18}")
_PORT: Final = re.compile(r"[0-9]{1,5}")
# RFC 9110 5.5: a field value is visible characters, SP and HTAB (obs-text is the UTF-8 check's).
_VALUE_CONTROL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


Authority = tuple[str, int | None]  # a Host header's host (lower case) and port, if any


class BadAuthority(ValueError):
    """A host[:port] that cannot be routed: its port is not 1-65535 in ASCII digits."""


def split_host_port(authority: str) -> tuple[str, int | None]:
    """`host[:port]` (IPv6 in brackets) -> (host, port); no port or an empty one is None (the
    default port). Raises BadAuthority for any other port: `str.isdigit()` and `int()` take
    Unicode digits (`²`, Arabic-Indic `٣`), and `int()` refuses 5,000 of them with a ValueError."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise BadAuthority("an IPv6 host needs its closing ]")
        host, rest = authority[: end + 1], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise BadAuthority("only :port may follow an IPv6 host")
        port_text = rest[1:]
    else:
        host, _, port_text = authority.partition(":")
    if not port_text:
        return host, None
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise BadAuthority("the port must be a number from 1 to 65535")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name, an IP address, an IPv6 one in brackets or not) is this machine
    only: a listen host that keeps the proxy local, a token URL that may be plain HTTP."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_method(method: str) -> None:
    if method in ECHO_METHODS:
        raise ProxyError(
            405,
            "method_not_allowed",
            f"{method} is refused: the upstream would echo the signed request, credentials "
            "included",
            headers={"Allow": "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"},
        )


def check_target(raw_target: str) -> None:
    # The pure-Python parser passes raw bytes >= 0x80 through (non-UTF-8 ones as surrogates),
    # and aiohttp 3.11's control characters too; llhttp refuses both. Neither may reach
    # routing, signing or the log.
    if not (raw_target.isascii() and raw_target.isprintable()):
        raise ProxyError(
            400,
            "invalid_target",
            "the request target must be printable ASCII (percent-encode the rest)",
        )


def check_header_values(raw_headers: tuple[tuple[bytes, bytes], ...]) -> None:
    # The message names no header and quotes no value: it may be a credential.
    if any(_VALUE_CONTROL.search(value) for _, value in raw_headers):
        raise ProxyError(400, "invalid_header", "header values must not contain control characters")


def check_framing(headers: list[tuple[str, str]]) -> None:
    """`Content-Length` and `Transfer-Encoding` as the proxy accepts them (the parser has
    already refused conflicting or duplicate framing)."""
    for name, value in headers:
        lowered = name.lower()
        if lowered == "content-length":
            if not _CONTENT_LENGTH.fullmatch(value) or int(value) > MAX_CONTENT_LENGTH:
                raise ProxyError(
                    400,
                    "invalid_content_length",
                    "Content-Length must be a decimal number without leading zeros, at most 2^63-1",
                )
        elif lowered == "transfer-encoding":
            codings = [coding.strip().lower() for coding in value.split(",")]
            if codings != ["chunked"]:
                raise ProxyError(
                    501,
                    "unsupported_transfer_coding",
                    "only Transfer-Encoding: chunked is supported",
                )


def check_host(host_header: str | None) -> Authority | None:
    """The `Host` header's host (lower case) and port, for routing; None without one."""
    if not host_header:
        return None
    try:
        host, port = split_host_port(host_header.strip())
    except BadAuthority as err:
        raise ProxyError(400, "invalid_host", f"invalid Host header: {err}") from None
    return host.lower(), port


def check_request(request: web.BaseRequest) -> Authority | None:
    """Raise the ProxyError that refuses `request`, or return its `Host` header's authority
    (`check_host`): it may be routed.

    Every refusal closes the connection: the request's framing (or target, or method) is one
    the proxy does not trust, so neither is what follows it on the connection."""
    try:
        check_method(request.method)
        check_target(request.raw_path)
        check_header_values(request.raw_headers)
        check_framing(_header_items(request))
        return check_host(request.headers.get("Host"))
    except ProxyError as err:
        err.close = True
        raise


def _header_items(request: web.BaseRequest) -> list[tuple[str, str]]:
    # Only the framing headers, from the parsed multidict (values already stripped of OWS).
    headers = request.headers
    return [
        (name, value)
        for name in ("Content-Length", "Transfer-Encoding")
        for value in headers.getall(name, ())
    ]


def body_unread(request: web.BaseRequest) -> bool:
    """Whether the request's body is (partly) still on the connection: refusing it must then
    close the connection, or its bytes would be read as the next request."""
    return request.body_exists and not request.content.is_eof()
