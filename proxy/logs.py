"""Structured logs: one JSON object a line on stderr by default, or a console format for people.

Secrets and signature values are never passed to the logger in the first place; the access
event carries only route, method, path, status, sizes, timing and error code.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Literal

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError

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
    server_log.filters[:] = [_quiet_parser_errors]


def _quiet_parser_errors(record: logging.LogRecord) -> bool:
    """A request the HTTP parser refused (aiohttp answers it 400 itself) is one info line, not
    an error with a traceback: any client could otherwise flood the logs with tracebacks."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, HttpProcessingError):
        record.msg, record.args = "request refused by the HTTP parser: %s", (error.message,)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
    return True


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def bound_logger(name: str) -> Any:
    """A concrete logger for hot paths: the module-level lazy proxy from `get_logger` resolves
    itself on every call. Take it after `configure_logging`."""
    return structlog.get_logger(name).bind()


_second: list[Any] = [-1, ""]  # the last whole second and its ISO text


def _timestamp(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """ISO 8601 UTC with microseconds, as structlog's TimeStamper(fmt="iso", utc=True) writes
    it, with the date-and-seconds part formatted once a second instead of once a line."""
    now = time.time()
    whole = int(now)
    if whole != _second[0]:
        _second[0] = whole
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    event["timestamp"] = f"{_second[1]}.{int((now - whole) * 1_000_000):06d}Z"
    return event
