"""Relaying: the upstream's answer written to the client, with the client's backpressure.

A small answer read whole goes out in one piece; any other streams chunk by chunk. Until the
status line and headers are out a failure is still an error answer (`ProxyError`); from then
on (`exchange.response_started`) it can only cut the connection (`ResponseAborted`), so the
client sees an incomplete response, never a truncated one that looks complete.
"""

from __future__ import annotations

import asyncio
from typing import Final

import aiohttp
from aiohttp import web

from proxy.errors import ProxyError, ResponseAborted
from proxy.exchange import Exchange
from proxy.forward import UpstreamResponse, failure_reason
from proxy.http import strip_hop_by_hop
from proxy.responses import AsGivenResponse, AsGivenStreamResponse

_CONTENT_LENGTH: Final = frozenset({"content-length"})


async def relay(
    client: web.BaseRequest, response: UpstreamResponse, exchange: Exchange
) -> web.StreamResponse:
    """Write `response` to `client`, then close it (the upstream connection goes back)."""
    try:
        if response.body is not None:
            return await _whole(client, response, response.body, exchange)
        return await _stream(client, response, exchange)
    except ConnectionError as exc:  # a failed write is the client's doing
        exchange.error = "client_closed"
        raise ResponseAborted("the client went away") from exc
    finally:
        await response.close()


async def _start(
    client: web.BaseRequest, out: web.StreamResponse, status: int, exchange: Exchange
) -> None:
    try:
        await out.prepare(client)
    except ValueError as exc:  # aiohttp refuses control characters before writing a byte
        raise ProxyError(
            502, "upstream_bad_response", f"the upstream sent an invalid header: {exc}"
        ) from exc
    exchange.status = status
    exchange.response_started = True


async def _whole(
    client: web.BaseRequest, response: UpstreamResponse, body: bytes, exchange: Exchange
) -> web.Response:
    # web.Response sets Content-Length from the body it is given.
    headers = strip_hop_by_hop(response.headers, _CONTENT_LENGTH)
    out = AsGivenResponse(
        status=response.status, reason=response.reason, headers=headers, body=body
    )
    await _start(client, out, response.status, exchange)  # here: a bad header is still a 502
    await out.write_eof()
    exchange.bytes_out = len(body)
    return out


async def _stream(
    client: web.BaseRequest, response: UpstreamResponse, exchange: Exchange
) -> web.StreamResponse:
    headers = strip_hop_by_hop(response.headers)
    out = AsGivenStreamResponse(status=response.status, reason=response.reason, headers=headers)
    await _start(client, out, response.status, exchange)
    chunks = response.chunks()
    idle = response.idle
    try:
        while True:
            # `timeout.read` between body chunks, kept here too: when aiohttp's C parser fails
            # on a broken chunk framing, it closes the connection and drops its own read timer
            # but never fails the body stream, which would then wait forever.
            try:
                async with asyncio.timeout(idle):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            try:
                await out.write(chunk)
            except ConnectionError as exc:
                # A failed write is the client's doing, even as aiohttp's
                # ClientConnectionResetError, which is also a ClientError.
                exchange.error = "client_closed"
                raise ResponseAborted("the client went away") from exc
            exchange.bytes_out += len(chunk)
    except (TimeoutError, aiohttp.ClientError) as exc:
        exchange.error = "upstream_aborted"
        message = f"the upstream response broke off: {failure_reason(exc)}"
        raise ResponseAborted(message) from exc
    await out.write_eof()
    return out
