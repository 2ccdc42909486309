"""The one module that reaches into aiohttp's private parts, for what aiohttp has no switch for.

Every private member used here is listed, once, in `HOOKS` (what it is, and what uses it) and
checked by `require_hooks()`: at start-up (`run`, `check`, `demo` exit 1 naming the installed
aiohttp when one is missing), by `HardenedServer`, and by the tests in
tests/test_aiohttp_internals.py, which fail loudly, naming the part, when an aiohttp upgrade
moves one (tests/test_aiohttp_server_internals.py and test_aiohttp_tunnel_internals.py test
what the parts do).

Client and response: a proxy must send what the app sent and relay what the upstream
answered, and aiohttp has no public switch for two things it adds on its own: the client's
automatic request headers (Accept, User-Agent, ...) and the server's `Server`/`Content-Type`
response headers. A release of aiohttp that renamed one would not fail loudly: the proxy would
add headers, or fail every request with a body.

Server hardening:

- `HardenedServer`: a `web.Server` whose connections are `HardenedRequestHandler`s.
- `HardenedRequestHandler` (aiohttp's `RequestHandler`, the protocol of one connection):
  - a request-head timeout: a connection that has not sent a complete request head within
    `header_timeout` seconds, from its start or from the first byte of a later request, is
    closed (slowloris); aiohttp only has an idle keep-alive timer, which trickled bytes do not
    end before it fires, and which it sets to an hour by default;
  - its own error pages (a request the parser refused, an exception that escaped a handler):
    the proxy's JSON error, without the `Server` banner and without quoting the refused bytes;
  - the pure-Python parser (`AIOHTTP_NO_EXTENSIONS=1`, or no wheel) held to llhttp's method
    rule: a method llhttp does not know, or in lower case, is refused (it would upper-case it);
  - a body llhttp refuses once it has started (a malformed chunk) fails that request's body
    reader at once, as the pure-Python parser does: aiohttp queues the refusal as a message of
    its own (`web_protocol._ErrInfo`), never seen by the handler reading the body.

CONNECT tunnels (used by proxy.tunnel). After the proxy answers a CONNECT with 200, the
connection carries HTTP requests again (in clear for `CONNECT host:80`, inside TLS for an
intercepted host). aiohttp has no public way to take a connection over from its request
handler, so:
- `connect_bytes_pending`: bytes the client sent after the CONNECT head, before the 200.
  aiohttp keeps them as the upgraded connection's tail (`RequestHandler._message_tail`); the
  pure-Python parser may put the first of them into the CONNECT's payload instead.
- `end_connect_payload`: a refused CONNECT's connection closes once the refusal is sent, and
  what the client sent after the CONNECT is never read as a request. The pure-Python parser
  reads it as the CONNECT's body, and aiohttp would wait up to its lingering time (10 s) for
  that body to end: it is ended here. The tail aiohttp holds is dropped (`_message_tail`):
  aiohttp 3.11 parsed it as the next requests before the answer went out.
- `server_of`: the `web.Server` a request arrived on (`RequestHandler._manager`), whose
  `__call__` makes the request handler (the asyncio protocol) of a new connection: the
  tunnel's connection gets one as if it had just been accepted (a `HardenedRequestHandler`,
  header timeout included), and is counted among the server's connections, so a shutdown
  closes it like any other.
- `set_keepalive_timeout`: the idle timeout of that handler (`_keepalive_timeout`); the
  tunnel's own idle timer must fire first, to log its reason.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any, Final, Literal

import aiohttp
from aiohttp import StreamReader, web, web_protocol
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.http_parser import HttpRequestParserPy

from proxy.admission import KNOWN_METHODS
from proxy.errors import error_response
from proxy.logs import parser_refusal_reason

HookKind = Literal[
    "class attribute",
    "attribute",
    "method",
    "coroutine method",
    "class",
    "instance attribute",
    "keyword argument",
]
_ABSENT: Final = object()


@dataclass(frozen=True, slots=True)
class Hook:
    """One private member of aiohttp, and where the proxy uses it.

    Kinds: a `class attribute` set on the class itself, an `attribute` of the class (a slot
    every instance has), a `method` or `coroutine method` of an aiohttp class (one inherited
    from asyncio's `Protocol` does not count), a `class` in a module, an `instance attribute`
    that `owner()` sets, a `keyword argument` of `owner`."""

    owner: type | ModuleType
    name: str
    kind: HookKind
    used_by: str

    @property
    def qualified_name(self) -> str:
        if isinstance(self.owner, ModuleType):
            return f"{self.owner.__name__}.{self.name}"
        return f"{self.owner.__module__}.{self.owner.__qualname__}.{self.name}"

    def present(self) -> bool:
        owner = self.owner
        if isinstance(owner, ModuleType):
            return isinstance(getattr(owner, self.name, None), type)
        if self.kind == "instance attribute":
            return hasattr(owner(), self.name)
        if self.kind == "keyword argument":
            return self.name in inspect.signature(owner).parameters
        # Set on an aiohttp class: aiohttp >= 3.11.8 reads `_skip_auto_headers` on the class,
        # an older one only has the instance attribute `skip_auto_headers`.
        member = next(
            (vars(cls)[self.name] for cls in owner.__mro__ if _defines(cls, self.name)), _ABSENT
        )
        if self.kind == "coroutine method":
            return inspect.iscoroutinefunction(member)
        if self.kind == "method":
            return callable(member)
        return member is not _ABSENT


def _defines(cls: type, name: str) -> bool:
    return cls.__module__.partition(".")[0] == "aiohttp" and name in vars(cls)


# The connection's request parser: `_parser` since aiohttp 3.14, `_request_parser` before.
_PARSER_ATTRIBUTE: Final = (
    "_parser" if hasattr(web_protocol.RequestHandler, "_parser") else "_request_parser"
)

_HANDLER: Final = web_protocol.RequestHandler
_HARDENED: Final = "HardenedRequestHandler"
_TUNNEL: Final = "proxy.tunnel (a CONNECT's connection taken over by a new request handler)"

HOOKS: Final = (
    # -- the client's automatic request headers, the server's response headers
    Hook(
        aiohttp.ClientSession,
        "request_class",
        "keyword argument",
        "proxy.forward.Forwarder (installs _VerbatimRequest; not in aiohttp's documentation)",
    ),
    Hook(
        aiohttp.ClientRequest,
        "_skip_auto_headers",
        "class attribute",
        "proxy.forward._VerbatimRequest (the request headers aiohttp must not add)",
    ),
    Hook(
        aiohttp.ClientRequest,
        "update_auto_headers",
        "method",
        "proxy.forward._VerbatimRequest (overridden: no automatic request headers)",
    ),
    Hook(
        web.StreamResponse,
        "_prepare_headers",
        "coroutine method",
        "proxy.responses.AsGivenStreamResponse (no Server banner, no added Content-Type)",
    ),
    Hook(
        web.StreamResponse,
        "_headers",
        "instance attribute",
        "proxy.responses.AsGivenStreamResponse (the headers about to be written)",
    ),
    # -- server hardening
    Hook(web.Server, "__call__", "method", f"HardenedServer, {_TUNNEL} (a new connection)"),
    Hook(_HANDLER, "connection_made", "method", f"{_HARDENED} (header timer), {_TUNNEL}"),
    Hook(_HANDLER, "data_received", "method", f"{_HARDENED} (header timer), {_TUNNEL}"),
    Hook(_HANDLER, "connection_lost", "method", f"{_HARDENED} (header timer), {_TUNNEL}"),
    Hook(_HANDLER, "handle_error", "method", f"{_HARDENED} (the proxy's error pages)"),
    Hook(_HANDLER, "_waiter", "attribute", f"{_HARDENED} (waiting for a request head)"),
    Hook(_HANDLER, "_messages", "attribute", f"{_HARDENED} (the parsed heads, refusals)"),
    Hook(_HANDLER, _PARSER_ATTRIBUTE, "attribute", f"{_HARDENED} (its request parser)"),
    Hook(web_protocol, "_ErrInfo", "class", f"{_HARDENED} (a refusal while a body is open)"),
    Hook(
        HttpRequestParserPy,
        "parse_message",
        "method",
        "_StrictPythonRequestParser (llhttp's request-line rules)",
    ),
    Hook(
        HttpRequestParserPy,
        "feed_data",
        "method",
        "_StrictPythonRequestParser (a method refused from its first bytes)",
    ),
    Hook(HttpRequestParserPy, "_lines", "instance attribute", "_StrictPythonRequestParser"),
    Hook(HttpRequestParserPy, "_tail", "instance attribute", "_StrictPythonRequestParser"),
    # -- CONNECT tunnels
    Hook(_HANDLER, "eof_received", "method", _TUNNEL),
    Hook(_HANDLER, "pause_writing", "method", _TUNNEL),
    Hook(_HANDLER, "resume_writing", "method", _TUNNEL),
    Hook(_HANDLER, "force_close", "method", _TUNNEL),
    Hook(_HANDLER, "close", "method", _TUNNEL),
    Hook(_HANDLER, "_message_tail", "attribute", "connect_bytes_pending, end_connect_payload"),
    Hook(_HANDLER, "_manager", "attribute", "server_of (the web.Server of a connection)"),
    Hook(_HANDLER, "_keepalive_timeout", "attribute", "set_keepalive_timeout"),
)


class UnsupportedAiohttp(RuntimeError):
    """The installed aiohttp lacks a hook the proxy relies on."""


def missing_hooks() -> list[Hook]:
    return [hook for hook in HOOKS if not hook.present()]


def require_hooks() -> None:
    """Raise `UnsupportedAiohttp`, naming the installed aiohttp, each missing part and the
    range the proxy supports, when any hook is missing."""
    missing = missing_hooks()
    if not missing:
        return
    names = ", ".join(f"{hook.qualified_name} ({hook.used_by})" for hook in missing)
    raise UnsupportedAiohttp(
        f"the installed aiohttp {aiohttp.__version__} lacks what the proxy relies on "
        f"(proxy/aiohttp_internals.py): {names}. Install a supported aiohttp "
        f"({supported_range()})."
    )


def supported_range() -> str:
    """The aiohttp requirement of the installed signing-proxy, e.g. `aiohttp<4,>=3.11.8`."""
    try:
        requirements = metadata.requires("signing-proxy") or []
    except metadata.PackageNotFoundError:
        requirements = []
    for requirement in requirements:
        if requirement.replace(" ", "").startswith(("aiohttp>", "aiohttp<", "aiohttp=")):
            return requirement.split(";", 1)[0].strip()
    return "see pyproject.toml"


DEFAULT_KEEPALIVE_TIMEOUT: Final = 75.0  # seconds idle between requests (nginx's default)

_REQUEST_LINE: Final = re.compile(rb"([^ ]+) +([^ ]+) +([^ ]+)")
_VERSIONS: Final = frozenset({b"HTTP/0.9", b"HTTP/1.0", b"HTTP/1.1", b"HTTP/2.0"})  # llhttp's
_METHOD_PREFIXES: Final = frozenset(
    method.encode()[:end] for method in KNOWN_METHODS for end in range(1, len(method) + 1)
)


class _StrictPythonRequestParser(HttpRequestParserPy):
    """aiohttp's pure-Python request parser, held to llhttp's request-line rules so that both
    parsers answer the same bytes the same way. On its own it accepts any method token and
    upper-cases it (`get` or `FROB` would be forwarded), passes raw bytes >= 0x80 in the target
    on (non-UTF-8 ones as surrogates), accepts any HTTP/d.d, refuses the runs of spaces between
    the three parts that llhttp tolerates, and waits for a whole line before refusing bytes
    that cannot start a request (a TLS handshake on the plain port)."""

    _limits: tuple[int, int, int]  # llhttp's: target, header name or value, header lines

    @classmethod
    def adopt(cls, parser: HttpRequestParserPy) -> None:
        """Make the parser aiohttp built one of these. aiohttp's Python parser applies
        `max_line_size` to the whole request line, `max_field_size` to a whole header line and
        `max_headers` to all lines; llhttp (as aiohttp drives it) to the target, to a header's
        name and value each, and to header fields. Its own limits are widened to let the exact
        checks in `parse_message` decide."""
        target, field, headers = parser.max_line_size, parser.max_field_size, parser.max_headers
        parser.__class__ = cls
        assert isinstance(parser, cls)
        parser._limits = (target, field, headers)
        parser.max_line_size = target + 64  # the method, the version, the spaces between
        parser.max_field_size = 2 * field + 64  # name, colon, spaces, value
        parser.max_headers = headers + 2  # the request line and the empty line count too

    def feed_data(self, data: bytes, *args: Any, **kwargs: Any) -> Any:
        result = super().feed_data(data, *args, **kwargs)
        # `_lines`/`_tail`: the lines of the head so far, and the incomplete line after them.
        if not result[0] and not self._lines and self._tail:
            _check_method_start(self._tail.lstrip(b"\r\n"))
        return result

    def parse_message(self, lines: list[bytes]) -> Any:
        line = lines[0]
        match = _REQUEST_LINE.fullmatch(line)
        if match is None:
            _check_method_start(line)
            raise BadStatusLine(error="Invalid request line")
        method, target, version = match.groups()
        if method.decode("latin-1") not in KNOWN_METHODS:
            raise BadHttpMethod(error="Invalid method encountered")
        if not target.isascii():
            raise InvalidURLError("Invalid char in url")
        if version not in _VERSIONS:
            raise BadStatusLine(error="Invalid HTTP version")
        max_target, max_field, max_headers = self._limits
        if len(target) > max_target:
            raise LineTooLong("the request target", max_target)
        fields = lines[1:-1]
        if len(fields) > max_headers:
            raise BadHttpMessage("Too many headers received")
        for field in fields:
            name, _, value = field.partition(b":")
            if len(name) > max_field or len(value.strip(b" \t")) > max_field:
                raise LineTooLong("a header", max_field)
        lines[0] = b" ".join((method, target, version))
        return super().parse_message(lines)


def _check_method_start(start: bytes) -> None:
    """Refuse at once a request line whose first bytes can start no known method."""
    token, space, _ = start.partition(b" ")
    if not token:
        return
    if start.startswith(b"\x16\x03"):
        raise BadHttpMethod(error="Received HTTPS traffic on an HTTP port")
    if token not in _METHOD_PREFIXES or (space and token.decode() not in KNOWN_METHODS):
        raise BadHttpMethod(error="Invalid method encountered")


class HardenedRequestHandler(web_protocol.RequestHandler):
    """One connection's protocol: aiohttp's, with a request-head timeout and the proxy's own
    error pages."""

    def __init__(
        self,
        manager: web.Server,
        *,
        header_timeout: float | None = None,
        on_header_timeout: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        parser = getattr(self, _PARSER_ATTRIBUTE)
        if type(parser) is HttpRequestParserPy:
            _StrictPythonRequestParser.adopt(parser)
        self._header_timeout = header_timeout
        self._on_header_timeout = on_header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._open_body: StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_timer()
        # The body reader points back at this protocol: keeping it past the connection would
        # make a cycle that holds the body's buffered bytes until the cyclic collector runs.
        self._open_body = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # `_waiter` is set while the connection waits for its next request head: bytes then
        # are the start (or more) of one, and the head must be complete in time.
        if self._waiter is not None:
            self._arm_header_timer()
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:
            self._watch_bodies(queued)
        if self._messages:  # a whole head was parsed (or refused): the timer is done
            self._disarm_header_timer()

    def _watch_bodies(self, first: int) -> None:
        """Keep the body of the latest request, and fail it when the parser refuses what
        follows while it is open. llhttp reports an error in a body (a malformed chunk) as a
        new refused message queued after the request: the handler reading the body would wait
        for more until `timeout.client_body`, holding its upstream connection. The pure-Python
        parser fails the body itself (`RequestPayloadError`, caused by the parser's error)."""
        for index in range(first, len(self._messages)):
            message, payload = self._messages[index]
            if not isinstance(message, web_protocol._ErrInfo):
                self._open_body = payload
                continue
            body, self._open_body = self._open_body, None
            if body is None or body.is_eof() or body.exception() is not None:
                continue
            # The parser's reason only: its message can quote the body's bytes.
            cause = message.exc
            reason = (
                parser_refusal_reason(cause)
                if isinstance(cause, HttpProcessingError)
                else type(cause).__name__
            )
            error = web.RequestPayloadError(reason)
            error.__cause__ = cause
            body.set_exception(error)
            # The body's reader answers the request; the connection ends after that answer.
            del self._messages[index]
            self.close()
            return

    def _arm_header_timer(self) -> None:
        if self._header_timeout is None or self._header_timer is not None:
            return
        self._header_timer = self._loop.call_later(self._header_timeout, self._header_expired)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_expired(self) -> None:
        self._header_timer = None
        if self.transport is None or self._messages or self._waiter is None:
            return  # a head arrived meanwhile, or the connection is gone
        if self._on_header_timeout is not None:
            self._on_header_timeout()
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own logs the error (proxy/logs.py quiets parser refusals) and raises when
        # the response has started; its page carries the Server banner and quotes the bytes.
        super().handle_error(request, status, exc, message)
        if isinstance(exc, HttpProcessingError):
            code, text = "malformed_request", parser_refusal_reason(exc)
        elif status == 500:
            code, text = "internal_error", "the proxy failed to handle this request"
        else:
            code, text = "request_failed", "the request could not be handled"
        response = error_response(status, code, text)
        response.force_close()
        return response


class HardenedServer(web.Server):
    """`web.Server` whose connections are `HardenedRequestHandler`s. Keyword arguments are
    aiohttp's `RequestHandler` ones plus `header_timeout` and `on_header_timeout`; the idle
    keep-alive timeout defaults to 75 s instead of aiohttp's hour."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Any],
        *,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        require_hooks()
        super().__init__(handler, keepalive_timeout=keepalive_timeout, **kwargs)

    def __call__(self) -> web_protocol.RequestHandler:
        # aiohttp's __call__ retries with most keyword arguments dropped on a TypeError; here
        # a wrong argument must fail, never quietly lose the timeouts.
        return HardenedRequestHandler(self, loop=self._loop, **self._kwargs)


# -- CONNECT tunnels (proxy.tunnel) --------------------------------------------------------------


def connect_bytes_pending(request: web.BaseRequest) -> bool:
    """Whether the client sent bytes after its CONNECT head (before any answer)."""
    if request.protocol is not None and request.protocol._message_tail:
        return True
    return bool(request.content.total_bytes)  # what the Python parser took as CONNECT's body


def end_connect_payload(request: web.BaseRequest) -> None:
    """Before a refused CONNECT's answer: what followed it is dropped and nothing more is read
    (no lingering close). aiohttp < 3.13 even parsed the held tail as the next requests
    (`finish_response`), failing before the answer went out."""
    if request.protocol is not None:
        request.protocol._message_tail = b""
    if not request.content.is_eof():
        request.content.feed_eof()


def server_of(request: web.BaseRequest) -> web.Server:
    server = getattr(request.protocol, "_manager", None)
    if not isinstance(server, web.Server):
        raise UnsupportedAiohttp("this aiohttp's request handler has no web.Server (_manager)")
    return server


def set_keepalive_timeout(handler: web_protocol.RequestHandler, seconds: float) -> None:
    """Before `connection_made`: the handler's idle timeout between requests."""
    handler._keepalive_timeout = seconds
