"""Forwarding: the only place that talks to upstreams.

One shared aiohttp client session with pooled keep-alive connections. The client is set up not
to touch what it carries: no automatic decompression, no auto-added headers, redirects passed
back. Request bodies stream unless the signer read them; response status, headers and body
always stream back, with backpressure from the client.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.config import RouteConfig
from proxy.errors import ProxyError
from proxy.exchange import Exchange
from proxy.signers import UpstreamRequest

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
CHUNK_SIZE: Final = 64 * 1024
# aiohttp's client adds these unless told not to; a proxy must send only what the app sent.
_SKIP_AUTO_HEADERS: Final = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def strip_hop_by_hop(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """Drop hop-by-hop headers: the fixed set, `Proxy-*`, and those `Connection` names."""
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
    }
    result: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in named or lowered.startswith("proxy-"):
            continue
        result.add(name, value)
    return result


@dataclass(frozen=True, slots=True)
class UpstreamOptions:
    """Per-route client settings, built once per config load."""

    ssl: ssl.SSLContext | bool
    timeout: aiohttp.ClientTimeout

    @classmethod
    def for_route(cls, config: RouteConfig) -> UpstreamOptions:
        context: ssl.SSLContext | bool
        if not config.tls.verify:
            context = False
        elif config.tls.ca_file:
            context = ssl.create_default_context(cafile=config.tls.ca_file)
        else:
            context = True
        timeout = aiohttp.ClientTimeout(
            total=config.timeout.total,
            connect=config.timeout.connect,
            sock_read=config.timeout.read,
        )
        return cls(ssl=context, timeout=timeout)


class UpstreamAborted(Exception):
    """The response had started when the upstream or the client failed: the client connection
    is cut so the client sees an incomplete response, never a truncated one that looks whole."""


class Forwarder:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(
        self,
        client: web.BaseRequest,
        upstream: UpstreamRequest,
        options: UpstreamOptions,
        exchange: Exchange,
    ) -> web.StreamResponse:
        """Send `upstream`; stream the answer back to `client`.

        Raises ProxyError before the response starts; UpstreamAborted after it started.
        """
        assert self._session is not None, "Forwarder.start() was not awaited"
        exchange.upstream_host = upstream.host
        data = self._request_body(client, upstream, exchange)
        started = time.perf_counter()
        try:
            async with self._session.request(
                upstream.method,
                URL(upstream.url, encoded=True),  # the app's bytes, not re-encoded
                headers=upstream.headers,
                data=data,
                allow_redirects=False,
                ssl=options.ssl,
                timeout=options.timeout,
            ) as response:
                exchange.upstream_seconds = time.perf_counter() - started
                return await self._stream_back(client, response, exchange)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise self._failure(
                exchange, 504, "upstream_timeout", "the upstream did not answer in time"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise self._failure(
                exchange,
                502,
                "upstream_unreachable",
                f"cannot connect to the upstream: {_reason(exc)}",
            ) from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            if client.transport is None or client.transport.is_closing():
                exchange.error = "client_closed"
                raise UpstreamAborted("the client went away") from exc
            raise self._failure(
                exchange, 502, "upstream_bad_response", f"the upstream failed: {_reason(exc)}"
            ) from exc

    @staticmethod
    def _failure(exchange: Exchange, status: int, code: str, message: str) -> Exception:
        if exchange.status:  # headers already sent: all we can do is cut the connection
            exchange.error = code
            return UpstreamAborted(message)
        return ProxyError(status, code, message)

    @staticmethod
    def _request_body(
        client: web.BaseRequest, upstream: UpstreamRequest, exchange: Exchange
    ) -> bytes | AsyncIterator[bytes] | None:
        if upstream.body is not None:
            exchange.bytes_in = len(upstream.body)
            return upstream.body if upstream.body or client.body_exists else None
        if not client.body_exists:
            return None

        async def stream() -> AsyncIterator[bytes]:
            async for chunk in client.content.iter_chunked(CHUNK_SIZE):
                exchange.bytes_in += len(chunk)
                yield chunk

        return stream()

    @staticmethod
    async def _stream_back(
        client: web.BaseRequest, response: aiohttp.ClientResponse, exchange: Exchange
    ) -> web.StreamResponse:
        headers = strip_hop_by_hop(response.headers)
        out = web.StreamResponse(status=response.status, reason=response.reason, headers=headers)
        exchange.status = response.status
        await out.prepare(client)
        try:
            async for chunk in response.content.iter_any():
                exchange.bytes_out += len(chunk)
                await out.write(chunk)
        except (TimeoutError, aiohttp.ClientError) as exc:
            exchange.error = "upstream_aborted"
            raise UpstreamAborted(f"the upstream response broke off: {_reason(exc)}") from exc
        except ConnectionError as exc:
            exchange.error = "client_closed"
            raise UpstreamAborted("the client went away") from exc
        await out.write_eof()
        return out


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or type(exc.os_error).__name__
    text = str(exc)
    return text if text else type(exc).__name__
