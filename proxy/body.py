"""Request bodies: the app's pace (`client_body_deadline`), and the bodies a signer must hash,
held in memory when small, spooled to disk when large.

A scheme that can hash incrementally (`Signer.new_body_digest`) has its digest fed chunk by
chunk as the body arrives; past the route's `spool_threshold_bytes` the bytes go to an unlinked
temporary file instead of memory, and stream from it to the upstream after signing. The file
has no name on disk (`tempfile.TemporaryFile`), so it disappears when closed or when the process
dies, whatever happened to the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import tempfile
from collections.abc import AsyncIterator
from typing import IO, Final

from aiohttp import StreamReader, web

from proxy.errors import ProxyError, ResponseAborted
from proxy.exchange import Exchange
from proxy.logs import get_logger

log = get_logger("signing_proxy")

WRITE_BATCH: Final = 1024 * 1024  # disk writes go to a thread in batches of this size
# The spool directory is full (or a quota or file-size limit is reached).
_NO_ROOM: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def body_too_large(route: str, limit: int, setting: str) -> ProxyError:
    """The 413 for a body over `limit`; its message and a log line name the route's setting
    to raise (`max_body_bytes` or `max_spooled_body_bytes`)."""
    log.warning("body_too_large", route=route, limit=limit, setting=f"routes[].{setting}")
    return ProxyError(
        413,
        "body_too_large",
        f"the request body is over {limit} bytes, this route's {setting}; "
        f"raise {setting} on route {route!r} to accept it",
    )


class SpooledBody:
    """A request body in an unlinked temporary file. Close it when the request is done."""

    def __init__(self) -> None:
        self._file: IO[bytes] = tempfile.TemporaryFile(prefix="signing-proxy-body-")  # noqa: SIM115
        self.size = 0
        self._pending = bytearray()

    async def write(self, data: bytes | bytearray) -> None:
        self._pending += data
        self.size += len(data)
        if len(self._pending) >= WRITE_BATCH:
            await self._flush()

    async def _flush(self) -> None:
        if self._pending:
            pending, self._pending = bytes(self._pending), bytearray()
            try:
                await asyncio.to_thread(self._file.write, pending)
            except OSError as err:
                if err.errno not in _NO_ROOM:
                    raise
                raise ProxyError(
                    507,
                    "spool_full",
                    "no room left to spool the request body to disk ($TMPDIR); the spool "
                    "directory must hold max_spooled_body_bytes for each upload in flight",
                ) from None

    async def finish(self) -> None:
        await self._flush()
        await asyncio.to_thread(self._file.flush)

    async def chunks(self, size: int = WRITE_BATCH) -> AsyncIterator[bytes]:
        """The body from the start; may be called again (a retry replays it)."""
        await asyncio.to_thread(self._file.seek, 0)
        while chunk := await asyncio.to_thread(self._file.read, size):
            yield chunk

    def close(self) -> None:
        self._file.close()

    def __repr__(self) -> str:
        return f"SpooledBody({self.size} bytes)"


class _BodyPace:
    """Samples the body's byte count every `idle / 4` and expires `deadline` once it has not
    moved for `idle` seconds.

    A class rather than a closure, and `stop()` drops every reference: an aborted request's
    exception holds this frame through its traceback, and a closure's cells (the body stream,
    the timer handle that points back at the closure, the deadline and with it the task) would
    then form a cycle that keeps the body's buffered bytes until the cyclic collector runs.
    """

    __slots__ = ("_content", "_deadline", "_every", "_handle", "_idle", "_loop", "_moved", "_seen")

    def __init__(self, content: StreamReader, deadline: asyncio.Timeout, idle: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._content: StreamReader | None = content
        self._deadline: asyncio.Timeout | None = deadline
        self._idle = idle
        self._every = idle / 4
        self._seen, self._moved = content.total_bytes, self._loop.time()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(self._every, self._check)

    def _check(self) -> None:
        content, deadline = self._content, self._deadline
        if content is None or deadline is None or content.is_eof():
            return  # stopped, or the whole body is in: the rest is not the app's pace
        now = self._loop.time()
        if content.total_bytes != self._seen:
            self._seen, self._moved = content.total_bytes, now
        elif now - self._moved >= self._idle:
            deadline.reschedule(now)  # expires at once: the task is cancelled
            return
        self._handle = self._loop.call_later(self._every, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._content = self._deadline = None


@contextlib.asynccontextmanager
async def client_body_deadline(
    request: web.BaseRequest, idle: float, exchange: Exchange
) -> AsyncIterator[None]:
    """Fail the request when the app sends no byte of its body for `idle` seconds.

    The body's byte count is sampled four times per `idle` (a pause is caught within 1.25 x
    `idle`), and the sampling stops once the body has ended, so only the app's pauses count,
    never the upstream's time or a long download. A stalled body would otherwise hold the
    request, its upstream connection and any route concurrency slot for as long as the app
    keeps the connection open. Expiry answers 408 (`client_body_timeout`), or cuts the
    connection if the response has already started.
    """
    try:
        async with asyncio.timeout(None) as deadline:
            pace = _BodyPace(request.content, deadline, idle)
            try:
                yield
            finally:
                pace.stop()
    except TimeoutError:
        if not deadline.expired():
            raise  # another timeout, not ours
        exchange.error = "client_body_timeout"
        message = f"the request body stalled: no byte for {idle:g} s"
        if exchange.response_started:
            raise ResponseAborted(message) from None  # cut it: it cannot become a 408 now
        raise ProxyError(408, "client_body_timeout", message, close=True) from None
