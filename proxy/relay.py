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
    body = response.body
    out: web.StreamResponse
    try:
        if body is not None:
            # web.Response sets Content-Length from the body it is given.
            headers = strip_hop_by_hop(response.headers, _CONTENT_LENGTH)
            out = AsGivenResponse(
                status=response.status, reason=response.reason, headers=headers, body=body
            )
        else:
            headers = strip_hop_by_hop(response.headers)
            out = AsGivenStreamResponse(
                status=response.status, reason=response.reason, headers=headers
            )
        try:
            await out.prepare(client)
        except ValueError as exc:  # aiohttp refuses control characters before writing a byte
            message = f"the upstream sent an invalid header: {exc}"
            raise ProxyError(502, "upstream_bad_response", message) from exc
        exchange.status = response.status
        exchange.response_started = True
        if body is not None:
            await out.write_eof()
            exchange.bytes_out = len(body)
        else:
            await _stream(out, response, exchange)
        return out
    except ConnectionError as exc:  # a failed write is the client's doing
        exchange.error = "client_closed"
        raise ResponseAborted("the client went away") from exc
    finally:
        await response.close()


async def _stream(out: web.StreamResponse, response: UpstreamResponse, exchange: Exchange) -> None:
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
