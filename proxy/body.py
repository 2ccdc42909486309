"""Request bodies a signer must hash: held in memory when small, spooled to disk when large.

A scheme that can hash incrementally (`Signer.new_body_digest`) has its digest fed chunk by
chunk as the body arrives; past the route's `spool_threshold_bytes` the bytes go to an unlinked
temporary file instead of memory, and stream from it to the upstream after signing. The file
has no name on disk (`tempfile.TemporaryFile`), so it disappears when closed or when the process
dies, whatever happened to the request.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from typing import IO, Final

WRITE_BATCH: Final = 1024 * 1024  # disk writes go to a thread in batches of this size


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
            await asyncio.to_thread(self._file.write, pending)

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
