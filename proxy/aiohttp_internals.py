"""The private aiohttp parts the proxy relies on, named in one place.

Each section lists the private attributes it reads or writes; `check_tunnel_hooks()` (run at
start-up and by tests/test_aiohttp_internals.py) fails loudly, naming what is missing, when an
aiohttp upgrade has moved one.

## CONNECT tunnels (proxy.tunnel)

After the proxy answers `CONNECT` with 200, the connection carries HTTP requests again (in
clear for `CONNECT host:80`, inside TLS for an intercepted host). aiohttp has no public way to
take a connection over from its request handler, so:

- `connect_bytes_pending`: bytes the client sent after the CONNECT head, before the 200.
  aiohttp keeps them as the upgraded connection's tail (`RequestHandler._message_tail`); the
  pure-Python parser (`AIOHTTP_NO_EXTENSIONS=1`) may put the first of them into the CONNECT
  request's payload instead.
- `server_of`: the `web.Server` a request arrived on (`RequestHandler._manager`), whose
  `__call__` makes the request handler (the asyncio protocol) of a new connection: the
  tunnel's connection gets one as if it had just been accepted, with the same settings, and
  is counted among the server's connections (so a shutdown drains it like any other).
- `end_connect_payload`: a refused CONNECT's connection closes once the refusal is sent. The
  pure-Python parser reads whatever follows a CONNECT as its body, and aiohttp would wait up
  to its lingering time (10 s) for that body to end before closing: it is ended here.
- `set_keepalive_timeout`: the idle timeout of that handler (`_keepalive_timeout`); the
  tunnel's own idle timer must fire first, to log its reason.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web, web_protocol

# (owner, attribute) pairs; instance attributes are checked on a handler made by a server.
_TUNNEL_CLASS_HOOKS: Final = (
    (web.Server, "__call__"),
    (web_protocol.RequestHandler, "connection_made"),
    (web_protocol.RequestHandler, "data_received"),
    (web_protocol.RequestHandler, "eof_received"),
    (web_protocol.RequestHandler, "connection_lost"),
    (web_protocol.RequestHandler, "pause_writing"),
    (web_protocol.RequestHandler, "resume_writing"),
    (web_protocol.RequestHandler, "force_close"),
    (web_protocol.RequestHandler, "close"),
)
_TUNNEL_INSTANCE_HOOKS: Final = ("_message_tail", "_manager", "_keepalive_timeout")


class UnsupportedAiohttp(RuntimeError):
    """The installed aiohttp lacks a private part the proxy relies on."""


def missing_tunnel_hooks() -> list[str]:
    import asyncio

    missing = [
        f"{owner.__module__}.{owner.__qualname__}.{name}"
        for owner, name in _TUNNEL_CLASS_HOOKS
        if not hasattr(owner, name)
    ]
    loop = asyncio.new_event_loop()
    try:

        async def noop(request: web.BaseRequest) -> web.StreamResponse:
            return web.Response()

        handler = web.Server(noop, loop=loop)()
        missing += [
            f"aiohttp.web_protocol.RequestHandler().{name}"
            for name in _TUNNEL_INSTANCE_HOOKS
            if not hasattr(handler, name)
        ]
        if getattr(handler, "_manager", None) is None:
            missing.append("aiohttp.web_protocol.RequestHandler()._manager (the web.Server)")
    finally:
        loop.close()
    return missing


def check_tunnel_hooks() -> None:
    """Raise `UnsupportedAiohttp`, naming each missing part, when CONNECT tunnels cannot work
    with the installed aiohttp."""
    missing = missing_tunnel_hooks()
    if missing:
        import aiohttp

        raise UnsupportedAiohttp(
            f"the installed aiohttp {aiohttp.__version__} lacks private parts the CONNECT "
            f"tunnels rely on (proxy/aiohttp_internals.py): {', '.join(missing)}"
        )


def connect_bytes_pending(request: web.BaseRequest) -> bool:
    """Whether the client sent bytes after its CONNECT head (before any answer)."""
    if request.protocol is not None and request.protocol._message_tail:
        return True
    return bool(request.content.total_bytes)  # what the Python parser took as CONNECT's body


def end_connect_payload(request: web.BaseRequest) -> None:
    """Before a refused CONNECT's answer: nothing after it is read (no lingering close)."""
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
