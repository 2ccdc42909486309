"""The fallback upstream, used when nginx is not installed: a fixed small JSON answer.

Not aiohttp: a bare asyncio protocol (on uvloop when it is installed) that reads a request head,
skips its `Content-Length` body and writes one canned response. It does the least work an HTTP/1.1
keep-alive server can, so the upstream stays far from being the bottleneck of the proxies under
test. Chunked request bodies are not needed by the bench and are answered `501` + close.

    python bench/upstream.py --port 8081
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Final, cast

BODY: Final = b'{"ok":true,"items":[1,2,3],"note":"signing-proxy bench upstream"}'
RESPONSE: Final = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: bench-upstream\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n" + BODY
)
_NOT_IMPLEMENTED: Final = (
    b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)
_MAX_HEAD: Final = 64 * 1024


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._body_left = 0  # bytes of the current request's body still to skip
        self._answer_pending = False  # a head was read; answer once its body is skipped
        self._close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        buffer = self._buffer
        buffer += data
        answers = 0
        while True:
            if self._body_left:
                skipped = min(self._body_left, len(buffer))
                del buffer[:skipped]
                self._body_left -= skipped
                if self._body_left:
                    break
            if self._answer_pending:
                self._answer_pending = False
                answers += 1
                if self._close_after:
                    break
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    transport.close()
                break
            head = bytes(buffer[:end]).lower()
            del buffer[: end + 4]
            if b"transfer-encoding:" in head:
                transport.write(_NOT_IMPLEMENTED)
                transport.close()
                return
            self._body_left = _content_length(head)
            self._answer_pending = True
            self._close_after = head.startswith(b"http/1.0", head.find(b" http/") + 1) or (
                b"\r\nconnection: close" in head
            )
        if answers:
            transport.write(RESPONSE * answers)
        if self._close_after and not self._answer_pending:
            transport.close()


def _content_length(head: bytes) -> int:
    start = head.find(b"\r\ncontent-length:")
    if start < 0:
        return 0
    start += len(b"\r\ncontent-length:")
    end = head.find(b"\r\n", start)
    return int(head[start : end if end >= 0 else len(head)].strip())


async def serve(host: str, port: int, *, use_aiohttp: bool = False) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if use_aiohttp:
        await serve_aiohttp(host, port, stop)
        return
    server = await loop.create_server(UpstreamProtocol, host, port, reuse_address=True, backlog=512)
    async with server:
        await stop.wait()


async def serve_aiohttp(host: str, port: int, stop: asyncio.Event) -> None:
    """The same answer through aiohttp's low-level server (what signing-proxy's server half is
    built on): for measuring what aiohttp's server costs per request."""
    from aiohttp import web

    async def handler(request: web.BaseRequest) -> web.Response:
        if request.body_exists:
            await request.read()
        return web.Response(body=BODY, content_type="application/json")

    runner = web.ServerRunner(web.Server(handler, access_log=None), shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--aiohttp", action="store_true", help="serve through aiohttp's low-level server instead"
    )
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port, use_aiohttp=args.aiohttp))
    else:
        uvloop.run(serve(args.host, args.port, use_aiohttp=args.aiohttp))


if __name__ == "__main__":
    main()
