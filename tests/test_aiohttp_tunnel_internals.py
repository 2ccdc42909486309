"""The aiohttp-private parts CONNECT tunnels rely on (proxy/aiohttp_internals.py): present in
the installed aiohttp, and doing what the tunnel needs. An aiohttp upgrade that moves one fails
here, loudly and by name, not as a tunnel that silently stops working."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web, web_protocol

from proxy import aiohttp_internals
from proxy.aiohttp_internals import (
    UnsupportedAiohttp,
    connect_bytes_pending,
    end_connect_payload,
    missing_hooks,
    require_hooks,
    server_of,
    set_keepalive_timeout,
)

pytestmark = pytest.mark.smoke  # also run on the lowest dependency versions (.ci/run)


def test_every_private_part_is_present() -> None:
    assert missing_hooks() == []
    require_hooks()


def test_a_missing_part_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(web_protocol.RequestHandler, "force_close")
    with pytest.raises(UnsupportedAiohttp, match=r"RequestHandler\.force_close \(proxy\.tunnel"):
        require_hooks()


async def _serve_connect(
    seen: list[tuple[bool, web.Server, web_protocol.RequestHandler]], extra: bytes
) -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        await asyncio.sleep(0.1)  # the early bytes have arrived by now
        protocol = request.protocol
        assert isinstance(protocol, web_protocol.RequestHandler)
        seen.append((connect_bytes_pending(request), server_of(request), protocol))
        response = web.Response(status=204)
        response.force_close()
        end_connect_payload(request)  # else the Python parser lingers 10 s for a CONNECT body
        return response

    server = web.Server(handler)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"CONNECT h.test:443 HTTP/1.1\r\nHost: h.test:443\r\n\r\n" + extra)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)  # the refusal, then EOF
        assert answer.startswith(b"HTTP/1.1 204")
        writer.close()
        assert seen[-1][1] is server
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("extra", [b"", b"\x16\x03\x01\x00\x05hello"])
async def test_early_bytes_and_the_server_of_a_request(extra: bytes) -> None:
    seen: list[tuple[bool, web.Server, web_protocol.RequestHandler]] = []
    await _serve_connect(seen, extra)
    assert seen[0][0] is bool(extra)


async def test_a_new_handler_takes_the_keepalive_timeout() -> None:
    async def noop(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    handler = web.Server(noop)()
    set_keepalive_timeout(handler, 12.5)
    assert handler._keepalive_timeout == 12.5
    assert aiohttp_internals.__doc__ is not None
    assert "_message_tail" in aiohttp_internals.__doc__
