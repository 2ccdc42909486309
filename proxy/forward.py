"""Forwarding: the only place that talks to upstreams.

One shared aiohttp client session with pooled keep-alive connections. The client is set up not
to touch what it carries: no automatic decompression, no auto-added headers, redirects passed
back. The request body streams unless the signer read it. `Forwarder.forward` ends when the
upstream's status and headers are in (and, for a small response, its whole body): it returns an
`UpstreamResponse` for `proxy.relay` to write to the client, so every failure here comes before
the client has been sent anything.
"""

from __future__ import annotations

import errno
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.config import RouteConfig, setting_at
from proxy.errors import ProxyError, ResponseAborted
from proxy.exchange import Exchange
from proxy.http import are_field_names
from proxy.logs import body_refusal_reason, get_logger
from proxy.signers import UpstreamRequest
from proxy.tls import client_tls
from proxy.upstream_tls import TlsMaterial, material_digest

log = get_logger("signing_proxy")

CHUNK_SIZE: Final = 64 * 1024
SMALL_RESPONSE: Final = 64 * 1024  # read whole and answered in one piece
NO_BODY_STATUSES: Final = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class UpstreamOptions:
    """Per-route client settings, built once per config load (kept by a reload that changes
    neither the route nor its TLS files, so its pooled connections stay in use: aiohttp pools
    connections per SSL context)."""

    ssl: ssl.SSLContext | bool
    timeout: aiohttp.ClientTimeout
    tls: TlsMaterial

    @classmethod
    def for_route(
        cls, config: RouteConfig, previous: UpstreamOptions | None = None
    ) -> UpstreamOptions:
        """The options of `config`; `previous` (those of an unchanged route) when its TLS files
        (CA, client certificate and key) still hold what `previous` was built from."""
        with setting_at("tls"):
            if previous is not None and material_digest(config.tls) == previous.tls.digest:
                return previous
            tls = client_tls(config.tls)
        timeout = aiohttp.ClientTimeout(
            total=config.timeout.total,
            connect=config.timeout.connect,
            sock_read=config.timeout.read,
        )
        return cls(ssl=tls.ssl, timeout=timeout, tls=tls)


class UpstreamResponse:
    """An upstream's answer, checked and ready to relay.

    `body` is the whole body when it was small enough to read at once (a `Content-Length` up to
    `SMALL_RESPONSE`, on a response that has a body); otherwise None and the body streams from
    `chunks()`, with `idle` (the route's `timeout.read`) allowed between two chunks. `close()`
    gives the upstream connection back (or drops it, when the body was not read to its end).
    """

    __slots__ = ("_response", "body", "headers", "idle", "reason", "status")

    def __init__(
        self, response: aiohttp.ClientResponse, body: bytes | None, idle: float | None
    ) -> None:
        self._response = response
        self.status = response.status
        self.reason = response.reason
        self.headers: CIMultiDictProxy[str] = response.headers
        self.body = body
        self.idle = idle

    def chunks(self) -> AsyncIterator[bytes]:
        return self._response.content.iter_any()

    async def close(self) -> None:
        self._response.release()
        await self._response.wait_for_close()


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
    ) -> UpstreamResponse:
        """Send `upstream`; return its answer, for the caller to relay (and close).

        Raises ProxyError for a failed exchange or an answer the proxy will not relay, and
        ResponseAborted when the client went away meanwhile.
        """
        assert self._session is not None, "Forwarder.start() was not awaited"
        exchange.upstream_host = upstream.host
        request_body = _ClientBody(client, upstream, exchange)
        data = request_body.data()
        started = time.perf_counter()
        try:
            response = await self._session.request(
                upstream.method,
                URL(upstream.url, encoded=True),  # the app's bytes, not re-encoded
                headers=upstream.headers,
                data=data,
                allow_redirects=False,
                ssl=options.ssl,
                timeout=options.timeout,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            message = "the upstream did not answer in time"
            raise upstream_failed(exchange, exc, 504, "upstream_timeout", message) from exc
        except aiohttp.ClientConnectorError as exc:
            message = f"cannot connect to the upstream: {failure_reason(exc)}"
            raise upstream_failed(exchange, exc, 502, "upstream_unreachable", message) from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            if client.transport is None or client.transport.is_closing():
                exchange.error = "client_closed"
                raise ResponseAborted("the client went away") from exc
            if request_body.failure is not None:  # the client's body broke, not the upstream
                raise ProxyError(400, "invalid_body", request_body.failure) from exc
            message = f"the upstream failed: {failure_reason(exc)}"
            raise upstream_failed(exchange, exc, 502, "upstream_bad_response", message) from exc
        exchange.upstream_seconds = time.perf_counter() - started
        exchange.upstream_date = response.headers.get("Date")
        try:
            _check_relayable(response)
            # A small body is read at once: cheaper than streaming it, and one cut short is
            # still a clean 502, as nothing has reached the client yet.
            body = await response.read() if _read_whole(client, response) else None
        except (TimeoutError, aiohttp.ClientError) as exc:
            response.release()
            message = f"the upstream response broke off: {failure_reason(exc)}"
            raise upstream_failed(exchange, exc, 502, "upstream_bad_response", message) from exc
        except BaseException:
            response.release()
            raise
        return UpstreamResponse(response, body, options.timeout.sock_read)


def _check_relayable(response: aiohttp.ClientResponse) -> None:
    """Refuse (502, the upstream's failure, never our 500) an answer the proxy cannot relay
    faithfully."""
    # 1xx (101 included: we never forward Upgrade) and statuses outside 100-599 are not valid
    # final statuses (RFC 9110 15).
    if not 200 <= response.status <= 599:
        raise ProxyError(
            502, "upstream_bad_response", f"the upstream sent status {response.status}"
        )
    # aiohttp's client parser is lenient with responses: it keeps `Content-Length : 5` as a
    # header named "Content-Length " (and then reads to EOF); relayed, a lenient client would
    # take it as a Content-Length beside our own framing.
    if response.headers and not are_field_names(response.headers.keys()):
        raise ProxyError(502, "upstream_bad_response", "the upstream sent an invalid header name")


def _read_whole(client: web.BaseRequest, response: aiohttp.ClientResponse) -> bool:
    """Whether the answer has a small body of known length, read at once and sent in one piece."""
    length = response.content_length
    return (
        length is not None
        and length <= SMALL_RESPONSE
        and client.method != "HEAD"
        and response.status not in NO_BODY_STATUSES
    )


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
            return upstream.spooled.chunks()
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
            self.failure = f"the request body cannot be read: {failure_reason(exc)}"
            raise


def upstream_failed(
    exchange: Exchange, exc: BaseException, status: int, code: str, message: str
) -> ProxyError:
    """The error answered for a failed exchange with the upstream, logged first at warning
    level with its cause: the access log's line carries only the error code."""
    log.warning(
        "upstream_failed",
        route=exchange.route,
        upstream=exchange.upstream_host,
        code=code,
        cause=failure_cause(exc),
        reason=failure_reason(exc),
    )
    return ProxyError(status, code, message)


def failure_cause(exc: BaseException) -> str:
    """What kind of failure `exc` is, one word for a log field: `tls_verification`, `tls`,
    `dns`, `refused`, `reset`, `timeout`, `disconnected` (closed with no answer),
    `bad_response` (not valid HTTP), else `connect` or `network`."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "tls_verification"
    # `os_error` is unset on some connector errors in older aiohttp (3.11, 3.12.0).
    os_error = (
        getattr(exc, "os_error", None) if isinstance(exc, aiohttp.ClientConnectorError) else exc
    )
    if isinstance(os_error, ssl.SSLCertVerificationError):
        return "tls_verification"
    if isinstance(exc, aiohttp.ClientSSLError) or isinstance(os_error, ssl.SSLError):
        return "tls"
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError is one
        return "timeout"
    if isinstance(os_error, socket.gaierror):
        return "dns"
    if isinstance(os_error, ConnectionRefusedError):
        return "refused"
    if isinstance(os_error, ConnectionResetError) or getattr(os_error, "errno", None) in (
        errno.ECONNRESET,
        errno.EPIPE,
    ):
        return "reset"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return "bad_response"
    return "connect" if isinstance(exc, aiohttp.ClientConnectorError) else "network"


def failure_reason(exc: BaseException) -> str:
    """Why a client operation failed, fit for a client and a log: never the signed URL."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        # Its `os_error` is unset in older aiohttp (3.11, 3.12.0); `certificate_error` is not.
        error = exc.certificate_error
        return getattr(error, "strerror", None) or str(error) or type(error).__name__
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = getattr(exc, "os_error", None)
        if os_error is None:
            return type(exc).__name__
        return os_error.strerror or type(os_error).__name__
    # A connect timeout's str() is "Connection timeout to host <the signed URL>".
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "no connection within timeout.connect"
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return "no data within timeout.read"
    if isinstance(exc, TimeoutError):
        return "no complete answer within timeout.total"
    # Their str() appends the upstream URL, whose query is signed: signatures, and an AWS
    # session token (X-Amz-Security-Token) when presigning. Reasons reach clients and logs.
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.message or type(exc).__name__
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid upstream URL"
    # The client's body: its reason, never its bytes (a RequestPayloadError's text is aiohttp's
    # str() of the parser's error, which quotes them).
    if isinstance(exc, HttpProcessingError | web.RequestPayloadError):
        return body_refusal_reason(exc)
    text = str(exc)
    return text if text else type(exc).__name__
