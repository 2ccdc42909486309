"""Structured logs: one JSON object a line on stderr by default, or a console format for people.

Secrets and signature values are never passed to the logger in the first place; the access
event carries only route, method, path, status, sizes, timing and error code.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import IO, Any, Final, Literal

import orjson
import structlog
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    TransferEncodingError,
)

LogFormat = Literal["json", "console"]


def configure_logging(log_format: LogFormat = "json", level: int = logging.INFO) -> None:
    shared: list[Any] = [structlog.processors.add_log_level, _timestamp]
    if log_format == "json":
        renderer: Any = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory: Any = structlog.BytesLoggerFactory(sys.stderr.buffer)
        stdlib_renderer: Any = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        factory = structlog.PrintLoggerFactory(sys.stderr)
        stdlib_renderer = renderer
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Libraries (aiohttp, asyncio) log through the standard library: same format, same stream.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                stdlib_renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # aiohttp's own access log would duplicate ours.
    logging.getLogger("aiohttp.access").disabled = True
    server_log = logging.getLogger("aiohttp.server")
    # DEBUG, so that the filter also sees the refusals aiohttp logs at debug level (a
    # connection whose first bytes are not HTTP at all: TLS sent to the plain port, a port
    # scanner); the filter passes nothing else below WARNING, as before.
    server_log.setLevel(logging.DEBUG)
    server_log.filters[:] = [_quiet_parser_errors]
    access_log.configure(log_format, level)


_parser_refusal_hooks: list[Callable[[], None]] = []


def on_parser_refusal(hook: Callable[[], None]) -> Callable[[], None]:
    """Call `hook` for each request the HTTP parser refuses; returns the call that unhooks it.

    aiohttp answers those 400 itself, before any handler of ours runs: its error log line is
    the one place that sees them (the metrics count them from here)."""
    _parser_refusal_hooks.append(hook)
    return lambda: _parser_refusal_hooks.remove(hook)


def _quiet_parser_errors(record: logging.LogRecord) -> bool:
    """A request the HTTP parser refused (aiohttp answers it 400 itself) is one info line, not
    an error with a traceback: any client could otherwise flood the logs with tracebacks."""
    error = record.exc_info[1] if record.exc_info else None
    cause = getattr(error, "__cause__", None)
    if not isinstance(error, HttpProcessingError) and isinstance(cause, HttpProcessingError):
        # The rest of a body the parser refused, met by aiohttp's lingering read after the
        # proxy answered (and counted) the request: its reason, never its bytes or traceback.
        reason = parser_refusal_reason(cause)
        record.msg, record.args = "request body refused by the HTTP parser: %s", (reason,)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True
    if not isinstance(error, HttpProcessingError):
        return record.levelno >= logging.WARNING
    record.msg, record.args = (
        "request refused by the HTTP parser: %s",
        (parser_refusal_reason(error),),
    )
    record.exc_info, record.exc_text = None, None
    record.levelno, record.levelname = logging.INFO, "INFO"
    for hook in _parser_refusal_hooks:
        hook()
    return True


# Where aiohttp's messages start quoting the request's bytes: llhttp's reason is followed by
# ":\n\n" and the offending line; the Python parser's messages end in a repr (`... b'...'`).
_QUOTED_BYTES: Final = re.compile(r"\s*(?::|\n|b?['\"])")
# The Python parser's exceptions whose message is (or ends in) the refused bytes themselves:
# a fixed reason each, as llhttp would give it.
_FIXED_REASONS: Final[tuple[tuple[type[HttpProcessingError], str], ...]] = (
    (InvalidURLError, "Invalid request target"),
    (BadHttpMethod, "Invalid method encountered"),
    (BadStatusLine, "Invalid request line"),
    (InvalidHeader, "Invalid header"),
)
# The Python parser's chunked-body errors in its own words; any other is the chunk-size line it
# refused, verbatim (body bytes: they may hold a credential).
_CHUNK_REASONS: Final = (
    "Not enough data",
    "Bad chunk-size line ending",
    "Chunk size mismatch",
    "Bad trailer line ending",
    "Unexpected LF in chunk-extension",
)


def parser_refusal_reason(error: HttpProcessingError) -> str:
    """The parser's reason without the request bytes it quotes: the line it refused can be a
    header holding a credential (the app's `Proxy-Authorization`, for one), or a target whose
    query holds one (`?apikey=...`)."""
    message = error.message
    llhttp_reason, quoted, _ = message.partition(":\n\n")
    if quoted:
        return " ".join(llhttp_reason.split())
    if message == "Received HTTPS traffic on an HTTP port":
        return message
    for kind, reason in _FIXED_REASONS:
        if isinstance(error, kind):
            return reason
    if isinstance(error, TransferEncodingError) and not message.startswith(_CHUNK_REASONS):
        return "Invalid character in chunk size"  # llhttp's words
    reason = _QUOTED_BYTES.split(message, maxsplit=1)[0].strip()
    return reason or type(error).__name__


def body_refusal_reason(error: BaseException) -> str:
    """The reason a request body could not be read, without its bytes. aiohttp fails a body
    its parser refused with a `RequestPayloadError` whose text is `str()` of the parser's
    error, quoted bytes included (aiohttp 3.11's chunk-size error is the refused line
    itself): the reason comes from that cause, never from the wrapper's text."""
    cause = error if isinstance(error, HttpProcessingError) else error.__cause__
    if isinstance(cause, HttpProcessingError):
        return parser_refusal_reason(cause)
    return type(cause or error).__name__


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


_second: list[Any] = [-1, ""]  # the last whole second and its ISO text


def _now_iso() -> str:
    """ISO 8601 UTC with microseconds, as structlog's TimeStamper(fmt="iso", utc=True) writes
    it, with the date-and-seconds part formatted once a second instead of once a line."""
    now = time.time()
    whole = int(now)
    if whole != _second[0]:
        _second[0] = whole
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int((now - whole) * 1_000_000):06d}Z"


def _timestamp(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    event["timestamp"] = _now_iso()
    return event


class AccessLog:
    """The one line a request, kept off structlog's per-event processor chain.

    Every request writes one, so it is the log's hot path: in JSON format the line is the same
    JSON object the chain would render (same keys, same order, same timestamp), made with one
    `orjson.dumps`, and the lines of one event-loop turn go out in one write when the turn ends
    (`call_soon`), instead of one write each. `flush()` writes what is pending at once; the
    server calls it when it stops. In console format, and outside a running loop, each line is
    written as it comes.
    """

    def __init__(self) -> None:
        self._stream: IO[bytes] | None = None
        self._console: Any = None
        self._enabled = True
        self._pending: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def configure(self, log_format: LogFormat, level: int) -> None:
        self.flush()
        self._enabled = level <= logging.INFO
        self._stream = sys.stderr.buffer if log_format == "json" else None
        self._console = structlog.get_logger("signing_proxy") if log_format == "console" else None
        self._loop = None

    def write(self, fields: dict[str, Any]) -> None:
        """Log `fields` as the event "request" (the dict is consumed)."""
        if not self._enabled:
            return
        if self._stream is None:
            (self._console or structlog.get_logger("signing_proxy")).info("request", **fields)
            return
        fields["event"] = "request"
        fields["level"] = "info"
        fields["timestamp"] = _now_iso()
        pending = self._pending
        pending.append(orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE))
        if len(pending) > 1:
            return  # a flush is already scheduled for the end of this turn
        loop = self._loop
        if loop is None or loop.is_closed():
            try:
                loop = self._loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
        loop.call_soon(self.flush)

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if self._stream is not None:
            self._stream.write(data)
            self._stream.flush()


access_log = AccessLog()
atexit.register(access_log.flush)  # a line of the last turn is never lost on exit
