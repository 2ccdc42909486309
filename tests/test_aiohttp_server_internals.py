"""proxy/aiohttp_internals.py reaches into aiohttp's private server parts: these tests fail
loudly, naming the part, when an aiohttp upgrade moves one (the behaviour tests in
test_security_corpus.py would then fail less clearly)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, BadStatusLine, HttpProcessingError
from aiohttp.http_parser import HttpRequestParserPy

from proxy import aiohttp_internals
from proxy.aiohttp_internals import (
    HardenedRequestHandler,
    HardenedServer,
    Hook,
    UnsupportedAiohttp,
    _StrictPythonRequestParser,
    require_hooks,
)


def test_every_private_hook_exists_in_this_aiohttp() -> None:
    require_hooks()


def test_a_missing_hook_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    gone = Hook(web.Server, "_gone_in_a_future_aiohttp", "attribute", "a test")
    monkeypatch.setattr(aiohttp_internals, "HOOKS", (*aiohttp_internals.HOOKS, gone))
    with pytest.raises(RuntimeError, match=r"web_server\.Server\._gone_in_a_future_aiohttp"):
        require_hooks()
    with pytest.raises(UnsupportedAiohttp, match=r"_gone_in_a_future_aiohttp"):
        HardenedServer(_handler)  # refuses to build on such an aiohttp


async def _handler(_: web.BaseRequest) -> web.StreamResponse:
    return web.Response()


async def test_connections_are_hardened_with_an_explicit_keepalive() -> None:
    server = HardenedServer(_handler, header_timeout=3.0)
    protocol = server()
    assert isinstance(protocol, HardenedRequestHandler)
    assert protocol.keepalive_timeout == 75.0  # aiohttp's own default is an hour
    assert protocol._header_timeout == 3.0


async def test_a_wrong_argument_fails_instead_of_being_dropped() -> None:
    # aiohttp's web.Server retries without most arguments on a TypeError, quietly.
    server = HardenedServer(_handler, no_such_argument=1)
    with pytest.raises(TypeError):
        server()


def _strict_parser(**limits: Any) -> HttpRequestParserPy:
    protocol = HardenedServer(_handler)()  # a real connection protocol, never connected
    parser = HttpRequestParserPy(protocol, asyncio.get_running_loop(), 2**16, **limits)
    _StrictPythonRequestParser.adopt(parser)
    return parser


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"get / HTTP/1.1\r\nHost: h\r\n\r\n", BadHttpMethod),
        (b"FROB / HTTP/1.1\r\nHost: h\r\n\r\n", BadHttpMethod),
        (b"GET / HTTP/9.9\r\nHost: h\r\n\r\n", BadStatusLine),
        (b"GET /\xe9 HTTP/1.1\r\nHost: h\r\n\r\n", HttpProcessingError),
        (b"\x16\x03\x01\x00", BadHttpMethod),  # no line end needed
        (b"XYZ", BadHttpMethod),
    ],
)
async def test_the_python_parser_is_held_to_llhttps_rules(
    data: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        _strict_parser().feed_data(data)


async def test_the_python_parser_measures_limits_as_llhttp_does() -> None:
    parser = _strict_parser(max_line_size=100, max_field_size=100, max_headers=4)
    messages, _, _ = parser.feed_data(
        b"GET /" + b"a" * 99 + b" HTTP/1.1\r\nHost: h\r\nX-A: " + b"v" * 100 + b"\r\n\r\n"
    )
    assert messages[0][0].path == "/" + "a" * 99
    for data in (
        b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-A: " + b"v" * 101 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(5)) + b"\r\n",
    ):
        with pytest.raises(HttpProcessingError):
            _strict_parser(max_line_size=100, max_field_size=100, max_headers=4).feed_data(data)


async def test_a_partial_method_is_waited_for() -> None:
    assert _strict_parser().feed_data(b"\r\nPROPF")[0] == []
