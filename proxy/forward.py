"""Forwarding: the only place that talks to upstreams.

One shared aiohttp client session with pooled keep-alive connections. The client is set up not
to touch what it carries: no automatic decompression, no auto-added headers, redirects passed
back. Request bodies stream unless the signer read them; response status, headers and body
always stream back, with backpressure from the client.
"""

from __future__ import annotations

import asyncio
import re
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
from proxy.responses import AsGivenResponse, AsGivenStreamResponse
from proxy.signers import UpstreamRequest
from proxy.upstream_tls import TlsMaterial, load_material, material_digest

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
SMALL_RESPONSE: Final = 64 * 1024  # read whole and answered in one piece
_NO_BODY_STATUSES: Final = frozenset({204, 304})
# RFC 9110 5.1 field names. aiohttp's client parser is lenient with responses: it keeps
# `Content-Length : 5` as a header named "Content-Length " (and then reads to EOF); relayed,
# a lenient client would take it as a Content-Length beside our own framing.
# Checked for all names at once: joined by newlines, which no valid name contains.
_TOKENS: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*")
_CONTENT_LENGTH: Final = frozenset({"content-length"})


def connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """The header names a `Connection` header lists (hop-by-hop too), lower-cased."""
    values = headers.getall("Connection", ())
    if not values:
        return frozenset()
    return frozenset(token.strip().lower() for value in values for token in value.split(","))


def strip_hop_by_hop(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], also: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """Drop hop-by-hop headers: the fixed set, `Proxy-*`, those `Connection` names, and the
    lower-case names in `also`."""
    named = connection_tokens(headers)
    result: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lowered = name.lower()
        if (
            lowered in HOP_BY_HOP
            or lowered.startswith("proxy-")
            or (named and lowered in named)
            or (also and lowered in also)
        ):
            continue
        result.add(name, value)
    return result


@dataclass(frozen=True, slots=True)
class UpstreamOptions:
    """Per-route client settings, built once per config load (kept by a reload that changes
    neither the route nor its TLS files, so its pooled connections stay in use)."""

    ssl: ssl.SSLContext | bool
    timeout: aiohttp.ClientTimeout
    tls: TlsMaterial

    @classmethod
    def for_route(
        cls, config: RouteConfig, previous: UpstreamOptions | None = None
    ) -> UpstreamOptions:
        """The options of `config`; `previous` (those of an unchanged route) when its TLS files
        (CA, client certificate and key) still hold what `previous` was built from."""
        if previous is not None and material_digest(config.tls) == previous.tls.digest:
            return previous
        tls = load_material(config.tls)
        timeout = aiohttp.ClientTimeout(
            total=config.timeout.total,
            connect=config.timeout.connect,
            sock_read=config.timeout.read,
        )
        return cls(ssl=tls.ssl, timeout=timeout, tls=tls)


class RetryableStatus(Exception):
    """The upstream answered with a status the route retries; nothing was sent to the client."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the upstream answered {status}")
        self.status = status


class UpstreamAborted(Exception):
    """The response had started when the upstream or the client failed: the client connection
    is cut so the client sees an incomplete response, never a truncated one that looks whole."""


class _VerbatimRequest(aiohttp.ClientRequest):
    """aiohttp's client request, minus the headers it adds on its own.

    aiohttp adds Accept, Accept-Encoding, User-Agent and (for a body) Content-Type unless told
    to skip them, and the session's `skip_auto_headers` takes a slow path on every request
    (a copy of all headers, ~4 us); a proxy must send only what the app sent, always, so the
    skipping is fixed here once. The forwarding tests check that nothing is added.
    """

    _skip_auto_headers = CIMultiDict(
        (name, None) for name in ("Accept", "Accept-Encoding", "Content-Type", "User-Agent")
    )

    def update_auto_headers(self, skip_auto_headers: object) -> None:
        pass


class Forwarder:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            request_class=_VerbatimRequest,
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
        retry_statuses: frozenset[int] = frozenset(),
    ) -> web.StreamResponse:
        """Send `upstream`; stream the answer back to `client`.

        Raises ProxyError before the response starts; UpstreamAborted after it started;
        RetryableStatus, before anything is sent, for a status in `retry_statuses`.
        """
        assert self._session is not None, "Forwarder.start() was not awaited"
        exchange.upstream_host = upstream.host
        body = _ClientBody(client, upstream, exchange)
        data = body.data()
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
                exchange.upstream_date = response.headers.get("Date")
                if response.status in retry_statuses:
                    raise RetryableStatus(response.status)
                return await self._stream_back(
                    client, response, exchange, options.timeout.sock_read
                )
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
            if body.failure is not None:  # the client's body broke, not the upstream
                raise self._failure(exchange, 400, "invalid_body", body.failure) from exc
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
    async def _stream_back(
        client: web.BaseRequest,
        response: aiohttp.ClientResponse,
        exchange: Exchange,
        idle: float | None,
    ) -> web.StreamResponse:
        # Nothing has been sent yet: a response we cannot relay faithfully is the upstream's
        # failure (502), never our 500. 1xx (101 included: we never forward Upgrade) and
        # statuses outside 100-599 are not valid final statuses (RFC 9110 15).
        if not 200 <= response.status <= 599:
            raise ProxyError(
                502, "upstream_bad_response", f"the upstream sent status {response.status}"
            )
        if response.headers and not _TOKENS.fullmatch("\n".join(response.headers.keys())):
            raise ProxyError(
                502, "upstream_bad_response", "the upstream sent an invalid header name"
            )
        length = response.content_length
        if (
            length is not None
            and length <= SMALL_RESPONSE
            and client.method != "HEAD"
            and response.status not in _NO_BODY_STATUSES
        ):
            # web.Response sets Content-Length from the body it is given.
            headers = strip_hop_by_hop(response.headers, _CONTENT_LENGTH)
            return await _whole(client, response, headers, exchange)
        headers = strip_hop_by_hop(response.headers)
        out = AsGivenStreamResponse(status=response.status, reason=response.reason, headers=headers)
        try:
            await out.prepare(client)
        except ValueError as exc:  # aiohttp refuses control characters before writing a byte
            raise ProxyError(
                502, "upstream_bad_response", f"the upstream sent an invalid header: {exc}"
            ) from exc
        exchange.status = response.status
        chunks = response.content.iter_any()
        try:
            while True:
                # `timeout.read` between body chunks, kept here too: when aiohttp's C parser
                # fails on a broken chunk framing, it closes the connection and drops its own
                # read timer but never fails the body stream, which would then wait forever.
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
                    raise UpstreamAborted("the client went away") from exc
                exchange.bytes_out += len(chunk)
        except (TimeoutError, aiohttp.ClientError) as exc:
            exchange.error = "upstream_aborted"
            raise UpstreamAborted(f"the upstream response broke off: {_reason(exc)}") from exc
        await out.write_eof()
        return out


async def _whole(
    client: web.BaseRequest,
    response: aiohttp.ClientResponse,
    headers: CIMultiDict[str],
    exchange: Exchange,
) -> web.Response:
    """A small response read whole and answered in one piece: cheaper than streaming it, and a
    body cut short is still a clean 502 (nothing has reached the client yet)."""
    try:
        body = await response.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise ProxyError(
            502, "upstream_bad_response", f"the upstream response broke off: {_reason(exc)}"
        ) from exc
    out = AsGivenResponse(
        status=response.status, reason=response.reason, headers=headers, body=body
    )
    try:
        await out.prepare(client)  # here, not after we return: a bad header is still a 502
    except ValueError as exc:  # aiohttp refuses control characters before writing a byte
        raise ProxyError(
            502, "upstream_bad_response", f"the upstream sent an invalid header: {exc}"
        ) from exc
    exchange.status = response.status
    await out.write_eof()
    exchange.bytes_out = len(body)
    return out


class _ClientBody:
    """The body sent upstream: the signer's bytes, or the client's body as it streams in.

    When reading the client's body fails (a malformed chunked body), aiohttp reports it to us as
    a failure of the upstream connection, which it then drops (the upstream sees an incomplete
    request); `failure` records it, so that the client gets its 400 rather than a 502 blaming
    the upstream.
    """

    def __init__(
        self, client: web.BaseRequest, upstream: UpstreamRequest, exchange: Exchange
    ) -> None:
        self._client = client
        self._upstream = upstream
        self._exchange = exchange
        self.failure: str | None = None

    def data(self) -> bytes | AsyncIterator[bytes] | None:
        client, upstream = self._client, self._upstream
        if upstream.spooled is not None:  # a large signed body, sent from its temporary file
            self._exchange.bytes_in = upstream.spooled.size
            chunks: AsyncIterator[bytes] = upstream.spooled.chunks()
            return chunks
        if upstream.body is not None:
            self._exchange.bytes_in = len(upstream.body)
            return upstream.body if upstream.body or client.body_exists else None
        if not client.body_exists:
            return None
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._client.content.iter_chunked(CHUNK_SIZE):
                self._exchange.bytes_in += len(chunk)
                yield chunk
        except Exception as exc:
            self.failure = f"the request body cannot be read: {_reason(exc)}"
            raise


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or type(exc.os_error).__name__
    # Their str() appends the upstream URL, whose query is signed: signatures, and an AWS
    # session token (X-Amz-Security-Token) when presigning. Reasons reach clients and logs.
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.message or type(exc).__name__
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid upstream URL"
    text = str(exc)
    return text if text else type(exc).__name__
